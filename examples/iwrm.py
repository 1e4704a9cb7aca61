"""Instance-wise risk minimisation: one loss per sample, with autojac and with autogram.

Instead of minimising the mean loss of a batch, Jacobian descent treats the loss of every
sample as an objective. The autojac variant builds the ``[batch, n_params]`` Jacobian and
aggregates it with UPGrad; the autogram variant only computes its ``[batch, batch]`` Gramian,
layer by layer, weights the losses with ``UPGradWeighting`` and backpropagates them once. Both
give the same update; the second costs little more than ordinary training.

Run: ``python examples/iwrm.py --epochs 10``.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from jdoptim.aggregation import UPGrad, UPGradWeighting
from jdoptim.autogram import Engine
from jdoptim.autojac import backward, jac_to_grad


def make_data() -> tuple[Tensor, Tensor]:
    inputs = torch.randn(256, 10)
    targets = inputs @ torch.randn(10) + 0.1 * torch.randn(256)
    return inputs, targets


def make_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))


def train(mode: str, epochs: int, batch_size: int) -> tuple[float, float]:
    """Trains with ``mode`` in {"autojac", "autogram"}; returns the first and last mean losses."""
    torch.manual_seed(0)
    inputs, targets = make_data()
    model = make_model()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.02)
    criterion = nn.MSELoss(reduction="none")  # one loss per sample
    aggregator = UPGrad()
    weighting = UPGradWeighting()
    engine = Engine(model, batch_dim=0) if mode == "autogram" else None

    mean_losses = []
    for _ in range(epochs):
        epoch_losses = []
        for start in range(0, len(inputs), batch_size):
            x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
            losses = criterion(model(x).squeeze(1), y)  # shape [batch]
            optimizer.zero_grad()
            if engine is None:
                backward(losses)  # .jac: [batch, *param.shape]
                jac_to_grad(params, aggregator)
            else:
                gramian = engine.compute_gramian(losses)  # [batch, batch], no Jacobian built
                losses.backward(weighting(gramian))
            optimizer.step()
            epoch_losses.append(losses.mean().item())
        mean_losses.append(sum(epoch_losses) / len(epoch_losses))
    return mean_losses[0], mean_losses[-1]


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    parser = argparse.ArgumentParser(description="Instance-wise risk minimisation.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    results = {mode: train(mode, args.epochs, args.batch_size) for mode in ("autojac", "autogram")}
    for mode, (first, last) in results.items():
        print(f"{mode:8s}  mean training loss: epoch 1 {first:.4f} -> last epoch {last:.4f}")
    return results


if __name__ == "__main__":
    main()
