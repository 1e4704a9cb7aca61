"""Basic usage: compute the Jacobian of two losses with autojac and aggregate it with UPGrad.

The low-level equivalent of ``loss.backward(); optimizer.step()`` for several losses:
``autojac.backward(losses)`` stores the Jacobian of the losses in the ``.jac`` field of every
parameter (one row per loss), ``jac_to_grad`` aggregates it into ``.grad``, and any
``torch.optim`` optimizer takes the step.

Run: ``python examples/basic_usage.py --steps 100``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from jdoptim.aggregation import UPGrad
from jdoptim.autojac import backward, jac_to_grad


def main(argv: list[str] | None = None) -> list[tuple[float, float]]:
    parser = argparse.ArgumentParser(description="autojac.backward + jac_to_grad on two losses.")
    parser.add_argument("--steps", type=int, default=100, help="number of optimisation steps")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05)

    inputs = torch.randn(64, 10)
    targets = torch.stack([inputs[:, :5].sum(dim=1), inputs[:, 5:].sum(dim=1)], dim=1)

    history = []
    for step in range(args.steps):
        outputs = model(inputs)
        loss1 = (outputs[:, 0] - targets[:, 0]).pow(2).mean()
        loss2 = (outputs[:, 1] - targets[:, 1]).pow(2).mean()

        optimizer.zero_grad()
        backward([loss1, loss2])  # .jac of every parameter: [2, *param.shape]
        if step == 0:
            print(f"Jacobian of the first weight: shape {list(params[0].jac.shape)}")
        weights = jac_to_grad(params, UPGrad())  # .jac -> UPGrad -> .grad (and .jac is freed)
        optimizer.step()

        history.append((loss1.item(), loss2.item()))
        if step == 0 or (step + 1) % max(args.steps // 5, 1) == 0:
            assert weights is not None
            print(
                f"step {step + 1:4d}  loss1 {loss1.item():.4f}  loss2 {loss2.item():.4f}  "
                f"weights {[round(w, 3) for w in weights.tolist()]}"
            )
    return history


if __name__ == "__main__":
    main()
