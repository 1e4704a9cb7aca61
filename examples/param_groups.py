"""Per-parameter-group aggregators: UPGrad for the shared trunk, Mean for the heads.

A parameter group of the wrapped optimizer may carry an ``"aggregator"`` key: the Jacobian of
that group's parameters is then aggregated with its own aggregator. Groups without the key use
the default aggregator of the ``JacobianOptimizer``. Other per-group options (learning rate,
weight decay) work as usual.

Run: ``python examples/param_groups.py --steps 100``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import Mean, UPGrad


def main(argv: list[str] | None = None) -> tuple[list[float], list[float]]:
    parser = argparse.ArgumentParser(description="One aggregator per parameter group.")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    inputs = torch.randn(128, 8)
    targets = torch.stack([inputs[:, :4].sum(dim=1), inputs[:, 4:].pow(2).sum(dim=1)], dim=1)
    trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
    heads = nn.Linear(32, 2)

    inner = torch.optim.Adam(
        [
            {"params": trunk.parameters(), "aggregator": UPGrad()},
            {"params": heads.parameters(), "aggregator": Mean(), "lr": 5e-3},
        ],
        lr=1e-2,
    )
    optimizer = JacobianOptimizer(inner)

    first: list[float] = []
    last: list[float] = []
    for step in range(args.steps):
        outputs = heads(trunk(inputs))
        losses = [(outputs[:, i] - targets[:, i]).pow(2).mean() for i in range(2)]
        optimizer.zero_grad()
        optimizer.step(losses)
        last = [loss.item() for loss in losses]
        first = first or last
        if step == 0 or (step + 1) % max(args.steps // 4, 1) == 0:
            print(f"step {step + 1:4d}  task 1 loss {last[0]:.4f}  task 2 loss {last[1]:.4f}")
    for group, weights in zip(optimizer.param_groups, optimizer.last_weights, strict=True):
        rounded = None if weights is None else [round(w, 3) for w in weights.tolist()]
        print(f"group with {group['aggregator']!s:6s}: last weights {rounded}")
    return first, last


if __name__ == "__main__":
    main()
