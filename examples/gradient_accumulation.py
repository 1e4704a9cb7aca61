"""Gradient accumulation with ``JacobianOptimizer``: a large batch in micro-batches.

Each micro-batch's losses, divided by the number ``k`` of micro-batches (the same convention as
plain PyTorch gradient accumulation), are back-propagated with ``aggregate=False``: their Jacobian
is added to the parameters' ``.jac``. After the last micro-batch, ``opt.aggregate()`` aggregates
the accumulated Jacobian once into ``.grad``, where a ``GradScaler`` and gradient clipping see it,
then ``step`` applies it. The result equals the step on the whole batch.

Run: ``python examples/gradient_accumulation.py --steps 20``.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def task_losses(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return ((model(x) - y) ** 2).mean(dim=0)  # one mean squared error per output


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description="Gradient accumulation of Jacobians.")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batches", type=int, default=4)
    args = parser.parse_args(argv)
    k = args.micro_batches

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=generator)
    y = torch.stack([x[:, :4].sum(1), x[:, 4:].sum(1), x.pow(2).mean(1)], dim=1)

    results: dict[str, list[float]] = {}
    for name in ("whole batch", f"{k} micro-batches"):
        model = make_model()
        opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), UPGrad())
        for _ in range(args.steps):
            opt.zero_grad()
            if name == "whole batch":
                opt.backward(task_losses(model, x, y))
            else:
                for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True):
                    opt.backward(task_losses(model, xs, ys) / k, aggregate=False)
                opt.aggregate()  # before clipping and step, so that both see .grad
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            opt.step()
        with torch.no_grad():
            results[name] = task_losses(model, x, y).tolist()
        print(f"{name:>16}: losses {[round(value, 4) for value in results[name]]}")
    return results


if __name__ == "__main__":
    main()
