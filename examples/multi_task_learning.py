"""Multi-task learning: a shared trunk, one head per task, and the Jacobian through the features.

``mtl_backward(losses, features=...)`` gives every head the plain gradient of its own loss and
stores in the trunk's ``.jac`` the Jacobian of the task losses (one row per task), computed by
backpropagating through the shared features only. ``jac_to_grad`` aggregates it with UPGrad.
The second half does the same with ``JacobianOptimizer.step(losses, features=features)``.

Run: ``python examples/multi_task_learning.py --steps 200``.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad
from jdoptim.autojac import jac_to_grad, mtl_backward


def make_data(n_samples: int) -> tuple[Tensor, Tensor, Tensor]:
    """Two regression tasks on the same inputs: a linear one and a nonlinear one."""
    inputs = torch.randn(n_samples, 8)
    target1 = inputs @ torch.linspace(-1.0, 1.0, 8)
    target2 = (inputs[:, :4].sum(dim=1)).sin() * 3.0
    return inputs, target1, target2


def make_model() -> tuple[nn.Module, nn.Module, nn.Module]:
    trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
    return trunk, nn.Linear(16, 1), nn.Linear(16, 1)


def task_losses(
    trunk: nn.Module, head1: nn.Module, head2: nn.Module, inputs: Tensor, t1: Tensor, t2: Tensor
) -> tuple[Tensor, list[Tensor]]:
    features = trunk(inputs)
    loss1 = (head1(features).squeeze(1) - t1).pow(2).mean()
    loss2 = (head2(features).squeeze(1) - t2).pow(2).mean()
    return features, [loss1, loss2]


def train_low_level(steps: int) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    inputs, t1, t2 = make_data(128)
    trunk, head1, head2 = make_model()
    params = [*trunk.parameters(), *head1.parameters(), *head2.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    aggregator = UPGrad()

    first: list[float] = []
    last: list[float] = []
    for _ in range(steps):
        features, losses = task_losses(trunk, head1, head2, inputs, t1, t2)
        optimizer.zero_grad()
        mtl_backward(losses, features=features)  # heads: .grad; trunk: .jac of shape [2, ...]
        jac_to_grad(list(trunk.parameters()), aggregator)  # trunk: .jac -> UPGrad -> .grad
        optimizer.step()
        last = [loss.item() for loss in losses]
        first = first or last
    return first, last


def train_with_optimizer(steps: int) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    inputs, t1, t2 = make_data(128)
    trunk, head1, head2 = make_model()
    params = [*trunk.parameters(), *head1.parameters(), *head2.parameters()]
    optimizer = JacobianOptimizer(torch.optim.Adam(params, lr=1e-2), UPGrad())

    first: list[float] = []
    last: list[float] = []
    for _ in range(steps):
        features, losses = task_losses(trunk, head1, head2, inputs, t1, t2)
        optimizer.zero_grad()
        optimizer.step(losses, features=features)  # the same as the four lines above
        last = [loss.item() for loss in losses]
        first = first or last
    return first, last


def main(argv: list[str] | None = None) -> dict[str, tuple[list[float], list[float]]]:
    parser = argparse.ArgumentParser(description="Multi-task learning with mtl_backward.")
    parser.add_argument("--steps", type=int, default=200, help="number of optimisation steps")
    args = parser.parse_args(argv)

    results = {
        "mtl_backward + jac_to_grad": train_low_level(args.steps),
        "JacobianOptimizer": train_with_optimizer(args.steps),
    }
    for name, (first, last) in results.items():
        print(
            f"{name:28s} task 1: {first[0]:.4f} -> {last[0]:.4f}   "
            f"task 2: {first[1]:.4f} -> {last[1]:.4f}"
        )
    return results


if __name__ == "__main__":
    main()
