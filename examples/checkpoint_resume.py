"""Checkpoint and resume: save the model and the optimizer, reload them, continue exactly.

``JacobianOptimizer.state_dict()`` holds the state of the wrapped optimizer (e.g. Adam's moments)
and of every stateful aggregator (e.g. ``NashMTL``'s last weights). Saved with ``torch.save``
and reloaded with ``torch.load(..., weights_only=True)``, a resumed run continues exactly like an
uninterrupted one: this script checks it bit for bit.

Run: ``python examples/checkpoint_resume.py --steps 40``.
"""

from __future__ import annotations

import argparse
import io

import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad


def make_run() -> tuple[nn.Module, JacobianOptimizer]:
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), UPGrad())
    return model, optimizer


def train(model: nn.Module, optimizer: JacobianOptimizer, inputs: Tensor, steps: int) -> None:
    targets = torch.stack([inputs.sum(dim=1), inputs[:, 0] - inputs[:, 1]], dim=1)
    for _ in range(steps):
        outputs = model(inputs)
        losses = [(outputs[:, i] - targets[:, i]).pow(2).mean() for i in range(2)]
        optimizer.zero_grad()
        optimizer.step(losses)


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description="Save, reload and resume a training run.")
    parser.add_argument("--steps", type=int, default=40, help="steps before and after the save")
    parser.add_argument("--path", default=None, help="checkpoint file (default: in memory)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    inputs = torch.randn(64, 6)
    initial_model, _ = make_run()
    initial_state = initial_model.state_dict()

    # The uninterrupted run: 2 × steps steps.
    model, optimizer = make_run()
    model.load_state_dict(initial_state)
    train(model, optimizer, inputs, 2 * args.steps)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    # The interrupted run: steps steps, a checkpoint, then a fresh process would reload it.
    model, optimizer = make_run()
    model.load_state_dict(initial_state)
    train(model, optimizer, inputs, args.steps)
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    target = args.path if args.path is not None else io.BytesIO()
    torch.save(checkpoint, target)
    if isinstance(target, io.BytesIO):
        target.seek(0)

    resumed_model, resumed_optimizer = make_run()
    loaded = torch.load(target, weights_only=True)
    resumed_model.load_state_dict(loaded["model"])
    resumed_optimizer.load_state_dict(loaded["optimizer"])
    train(resumed_model, resumed_optimizer, inputs, args.steps)

    identical = all(
        torch.equal(a, b) for a, b in zip(uninterrupted, resumed_model.parameters(), strict=True)
    )
    print(f"resumed after {args.steps} steps, trained {args.steps} more")
    print(f"parameters identical to the uninterrupted run: {identical}")
    return identical


if __name__ == "__main__":
    main()
