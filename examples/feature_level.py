"""Exact multi-task mode against the feature-level mode, on scikit-learn's digits.

Three tasks on the 8×8 digits shipped with scikit-learn (the digit, its parity, whether it is at
least 5) share a 3-layer trunk. The same network is trained from the same initialisation three
ways through ``JacobianOptimizer``:

- ``Mean``: the gradient of the mean loss (one backward pass, the baseline);
- ``UPGrad, exact``: ``step(losses, features=features)`` aggregates the Jacobian of the losses
  with respect to the trunk's parameters (one backward pass per task through the trunk);
- ``UPGrad, features``: ``step(losses, features=features, aggregate_at="features")`` aggregates
  the Jacobian with respect to the features and backpropagates it once through the trunk: exact
  Jacobian descent in feature space, an approximation in parameter space, at about the cost of
  the baseline.

It prints the time per step of each run and the test accuracy of each task after every few
epochs (the training curves).

Run: ``python examples/feature_level.py`` (``--epochs``, ``--seed``).
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import Aggregator, Mean, UPGrad

RUNS = ("Mean", "UPGrad, exact", "UPGrad, features")


def digits_tasks(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inputs in [0, 1] and three label columns, with a seeded 75/25 split by image."""
    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    digit = torch.tensor(digits.target, dtype=torch.long)
    labels = torch.stack([digit, digit % 2, (digit >= 5).long()], dim=1)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    cut = 3 * len(order) // 4
    return inputs[order[:cut]], inputs[order[cut:]], labels[order[:cut]], labels[order[cut:]]


class Network(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, 32), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleList([nn.Linear(32, 10), nn.Linear(32, 2), nn.Linear(32, 2)])

    def forward(self, inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.trunk(inputs)
        return features, [head(features) for head in self.heads]


def train(
    run: str, data: tuple[Tensor, Tensor, Tensor, Tensor], epochs: int, seed: int, width: int
) -> tuple[list[list[float]], float]:
    """The test accuracies of the tasks after each epoch, and the median seconds per step."""
    x_train, x_test, y_train, y_test = data
    torch.manual_seed(seed)
    model = Network(width)
    aggregator: Aggregator = Mean() if run == "Mean" else UPGrad()
    optimizer = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=3e-3), aggregator)
    aggregate_at = "features" if run == "UPGrad, features" else "parameters"
    generator = torch.Generator().manual_seed(seed)
    curves, step_times = [], []
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            begin = time.perf_counter()
            features, logits = model(x_train[batch])
            losses = [cross_entropy(out, y_train[batch, t]) for t, out in enumerate(logits)]
            optimizer.zero_grad()
            optimizer.step(losses, features=features, aggregate_at=aggregate_at)
            step_times.append(time.perf_counter() - begin)
        with torch.no_grad():
            _, logits = model(x_test)
        curves.append(
            [(out.argmax(1) == y_test[:, t]).float().mean().item() for t, out in enumerate(logits)]
        )
    return curves, sorted(step_times)[len(step_times) // 2]


def main(argv: list[str] | None = None) -> dict[str, tuple[list[list[float]], float]]:
    parser = argparse.ArgumentParser(description="Exact against feature-level multi-task mode.")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args(argv)
    data = digits_tasks(args.seed)
    results = {run: train(run, data, args.epochs, args.seed, args.width) for run in RUNS}
    base = results["Mean"][1]
    print("run                ms/step  ×Mean   test accuracy (digit, parity, ≥ 5) by epoch")
    for run, (curves, seconds) in results.items():
        marks = sorted({0, len(curves) // 2, len(curves) - 1})
        shown = "  ".join(f"ep{e + 1}: " + "/".join(f"{a:.3f}" for a in curves[e]) for e in marks)
        print(f"{run:18s} {seconds * 1e3:7.2f}  {seconds / base:5.2f}   {shown}")
    return results


if __name__ == "__main__":
    main()
