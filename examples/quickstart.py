"""Quickstart: three tasks on one network, one of them 100× louder, and what fixes it.

The data ship with scikit-learn: two 8×8 digits overlaid on a 12×12 canvas (the left one at the
top left, the right one at the bottom right). A shared MLP trunk feeds three heads: classify the
left digit, classify the right digit, and regress ``100 × left digit`` with the mean squared
error. That last loss is about 10⁵ times the others at the start: the loss-scale imbalance that
real multi-task models have whenever their losses have different units.

The script trains the same network (same initialisation, same batches, Adam) four ways and prints
each digit task's test accuracy:

- ``summed loss``: ``(l1 + l2 + l3).backward()``, the usual baseline;
- ``UPGrad``: ``JacobianOptimizer(adam, UPGrad())``, the library's default, in multi-task mode;
- ``UPGrad, losses / initial``: the same, each loss divided by its value at the first step;
- ``IMTLG``: ``JacobianOptimizer(adam, IMTLG())``, an aggregator that ignores gradient norms.

What the numbers show with the defaults (and the benchmark, ``python -m benchmarks.methods``,
over three seeds): the summed loss and UPGrad both let the regression take the trunk, and the two
digit tasks stay near chance (10 %); dividing each loss by its initial value, or IMTLG, brings
them to 83-90 %. UPGrad guarantees that no task's gradient is contradicted, not that a task's
*scale* does not dominate; normalise the losses first (or pick a scale-invariant method). On the
two digit tasks alone (``--scale 0``), every method ties with the summed loss.

Switching an existing training loop is one line::

    optimizer = JacobianOptimizer(torch.optim.Adam(model.parameters()), UPGrad())
    ...
    optimizer.step(losses, features=features)  # instead of sum(losses).backward(); step()

Run: ``python examples/quickstart.py`` (``--help`` for the sizes; well under a minute on a laptop
CPU).
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import IMTLG, UPGrad

METHODS = ("summed loss", "UPGrad", "UPGrad, losses / initial", "IMTLG")


def make_data(pairs: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training and test canvases ``[n, 144]`` with their two digits ``[n, 2]``; no image is
    shared between training and test pairs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    cut = int(0.7 * len(images))
    out = []
    for pool, count in ((order[:cut], pairs), (order[cut:], pairs // 2)):
        left = pool[torch.randint(len(pool), (count,), generator=generator)]
        right = pool[torch.randint(len(pool), (count,), generator=generator)]
        canvas = torch.zeros(count, 12, 12)
        canvas[:, :8, :8] = images[left]
        canvas[:, 4:, 4:] = torch.maximum(canvas[:, 4:, 4:], images[right])
        out += [canvas.reshape(count, 144), torch.stack([labels[left], labels[right]], dim=1)]
    return out[0], out[1], out[2], out[3]


class Model(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.trunk = nn.Sequential(nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(64, 10), nn.Linear(64, 10), nn.Linear(64, 1)])

    def losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.trunk(x)
        losses = [F.cross_entropy(self.heads[i](features), y[:, i]) for i in range(2)]
        if self.scale > 0:  # the regression predicts scale × left digit, 10⁵ × the others
            prediction = self.scale * self.heads[2](features)[:, 0]
            losses.append(F.mse_loss(prediction, self.scale * y[:, 0].float()))
        return features, losses

    @torch.no_grad()
    def accuracies(self, x: Tensor, y: Tensor) -> list[float]:
        features = self.trunk(x)
        return [
            float((self.heads[i](features).argmax(dim=1) == y[:, i]).float().mean())
            for i in range(2)
        ]


def train(method: str, data: tuple[Tensor, ...], steps: int, scale: float) -> list[float]:
    """Trains from the same initialisation and batches; the test accuracy of both digits."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(0)
    model = Model(scale)
    adam = torch.optim.Adam(model.parameters(), lr=3e-3)
    aggregator = IMTLG() if method == "IMTLG" else UPGrad()
    optimizer = JacobianOptimizer(adam, aggregator)
    generator = torch.Generator().manual_seed(1)
    initial: list[Tensor] | None = None
    for _ in range(steps):
        index = torch.randint(len(train_x), (128,), generator=generator)
        features, losses = model.losses(train_x[index], train_y[index])
        if method == "summed loss":
            adam.zero_grad()
            torch.stack(losses).sum().backward()
            adam.step()
            continue
        if method == "UPGrad, losses / initial":
            initial = initial or [loss.detach() for loss in losses]
            losses = [loss / first for loss, first in zip(losses, initial, strict=True)]
        optimizer.zero_grad()
        optimizer.step(losses, features=features)  # the trunk's Jacobian, aggregated
    return model.accuracies(test_x, test_y)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description="Loss-scale imbalance on two-digit images.")
    parser.add_argument("--steps", type=int, default=100, help="Adam steps (batches of 128)")
    parser.add_argument("--pairs", type=int, default=2000, help="training pairs of digits")
    parser.add_argument("--scale", type=float, default=100.0, help="0: no regression task")
    args = parser.parse_args(argv)

    data = make_data(args.pairs)
    results = {method: train(method, data, args.steps, args.scale) for method in METHODS}
    print(f"{'method':<26} {'left digit':>10} {'right digit':>11}   (test accuracy)")
    for method, (left, right) in results.items():
        print(f"{method:<26} {100 * left:>9.1f}% {100 * right:>10.1f}%")
    return results


if __name__ == "__main__":
    main()
