"""Partial Jacobian descent: weights from the Gramian of the last layers only.

Computing the Gramian of the full model is the expensive part of instance-wise risk
minimisation. A cheap approximation computes it with respect to the parameters of the last
layers only: the ``Engine`` is given those modules, the weights come from their Gramian, and
``losses.backward(weights)`` still updates every parameter of the model.

Run: ``python examples/partial_jd.py --epochs 10``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from jdoptim.aggregation import UPGradWeighting
from jdoptim.autogram import Engine


def main(argv: list[str] | None = None) -> tuple[float, float]:
    parser = argparse.ArgumentParser(description="Partial Jacobian descent with autogram.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    inputs = torch.randn(256, 10)
    targets = (inputs[:, :3].sum(dim=1) > 0).long()
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.CrossEntropyLoss(reduction="none")

    # Only the last two linear layers take part in the Gramian.
    engine = Engine(model[2], model[4], batch_dim=0)
    weighting = UPGradWeighting()

    mean_losses = []
    for epoch in range(args.epochs):
        epoch_losses = []
        for start in range(0, len(inputs), args.batch_size):
            x, y = inputs[start : start + args.batch_size], targets[start : start + args.batch_size]
            losses = criterion(model(x), y)
            optimizer.zero_grad()
            gramian = engine.compute_gramian(losses)  # Gramian w.r.t. model[2] and model[4]
            losses.backward(weighting(gramian))  # every layer gets a gradient
            optimizer.step()
            epoch_losses.append(losses.mean().item())
        mean_losses.append(sum(epoch_losses) / len(epoch_losses))
        print(f"epoch {epoch + 1:3d}  mean loss {mean_losses[-1]:.4f}")

    accuracy = (model(inputs).argmax(dim=1) == targets).float().mean().item()
    print(f"training accuracy {accuracy:.3f}")
    return mean_losses[0], mean_losses[-1]


if __name__ == "__main__":
    main()
