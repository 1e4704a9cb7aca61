"""Quickstart: train one network on two tasks with ``JacobianOptimizer`` (UPGrad).

Two regression tasks share a trunk; the second task's targets are ten times larger, so with the
usual summed loss its gradient dominates every update. ``JacobianOptimizer`` computes the
Jacobian of the two losses instead (one row per task) and aggregates it with UPGrad into an
update that decreases both losses to first order whenever that is possible. The script trains
the same network both ways, from the same initialisation, and prints the two task losses of
each run side by side.

Switching an existing training loop is one line::

    optimizer = JacobianOptimizer(torch.optim.Adam(model.parameters()), UPGrad())
    ...
    optimizer.step([loss1, loss2])  # instead of (loss1 + loss2).backward(); optimizer.step()

Run: ``python examples/quickstart.py`` (``--help`` for the sizes).
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad


def make_data(samples: int, features: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, features, generator=generator)
    half = features // 2
    first = torch.sin(inputs[:, :half].sum(dim=1))
    second = 10.0 * torch.tanh(inputs[:, half:].sum(dim=1) - inputs[:, :half].sum(dim=1))
    return inputs, torch.stack([first, second], dim=1)


def make_model(features: int, hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 2),
    )


def task_losses(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """The mean squared error of each task: a vector of 2 losses."""
    return ((model(inputs) - targets) ** 2).mean(dim=0)


def main(argv: list[str] | None = None) -> dict[str, list[tuple[float, float]]]:
    parser = argparse.ArgumentParser(description="Two-task training with JacobianOptimizer.")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps")
    parser.add_argument("--samples", type=int, default=256, help="training samples")
    parser.add_argument("--features", type=int, default=8, help="input features")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    args = parser.parse_args(argv)

    inputs, targets = make_data(args.samples, args.features)
    every = max(args.steps // 5, 1)
    history: dict[str, list[tuple[float, float]]] = {}

    # Jacobian descent: one row per task, aggregated by UPGrad.
    model = make_model(args.features, args.hidden)
    optimizer = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=args.lr), UPGrad())
    runs = history["JacobianOptimizer(UPGrad)"] = []
    for _ in range(args.steps):
        losses = task_losses(model, inputs, targets)
        optimizer.zero_grad()
        optimizer.step(losses)
        runs.append((losses[0].item(), losses[1].item()))

    # Baseline: the gradient of the summed loss.
    model = make_model(args.features, args.hidden)
    optimizer_sum = torch.optim.Adam(model.parameters(), lr=args.lr)
    runs = history["summed loss"] = []
    for _ in range(args.steps):
        losses = task_losses(model, inputs, targets)
        optimizer_sum.zero_grad()
        losses.sum().backward()
        optimizer_sum.step()
        runs.append((losses[0].item(), losses[1].item()))

    print(f"{'step':>5} | {'UPGrad task 1':>13} {'task 2':>8} | {'sum task 1':>10} {'task 2':>8}")
    jd, summed = history["JacobianOptimizer(UPGrad)"], history["summed loss"]
    for step in range(args.steps):
        if step == 0 or (step + 1) % every == 0:
            print(
                f"{step + 1:>5} | {jd[step][0]:>13.4f} {jd[step][1]:>8.4f} | "
                f"{summed[step][0]:>10.4f} {summed[step][1]:>8.4f}"
            )
    last_weights = optimizer.last_weights[0]
    assert last_weights is not None
    print(f"last UPGrad weights: {[round(w, 3) for w in last_weights.tolist()]}")
    return history


if __name__ == "__main__":
    main()
