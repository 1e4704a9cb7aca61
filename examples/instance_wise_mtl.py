"""Instance-wise multi-task learning: one objective per (sample, task) pair.

The losses form a matrix of shape ``[batch, tasks]``. The ``Engine`` returns their generalized
Gramian, of shape ``[batch, tasks, tasks, batch]``, and ``Flattening(UPGradWeighting())`` treats
it as the Gramian of ``batch × tasks`` objectives, returning weights of shape ``[batch, tasks]``
for ``losses.backward(weights)``.

Run: ``python examples/instance_wise_mtl.py --epochs 10``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from jdoptim.aggregation import Flattening, UPGradWeighting
from jdoptim.autogram import Engine


def main(argv: list[str] | None = None) -> tuple[list[float], list[float]]:
    parser = argparse.ArgumentParser(description="Instance-wise multi-task learning.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    inputs = torch.randn(128, 6)
    targets = torch.stack([inputs.sum(dim=1), inputs[:, 0] * inputs[:, 1]], dim=1)  # 2 tasks
    trunk = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
    heads = nn.Linear(32, 2)  # one output per task
    model = nn.Sequential(trunk, heads)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    engine = Engine(trunk, heads, batch_dim=0)
    weighting = Flattening(UPGradWeighting())

    per_task_history = []
    for epoch in range(args.epochs):
        totals = torch.zeros(2)
        for start in range(0, len(inputs), args.batch_size):
            x, y = inputs[start : start + args.batch_size], targets[start : start + args.batch_size]
            losses = (model(x) - y).pow(2)  # [batch, tasks]
            optimizer.zero_grad()
            gramian = engine.compute_gramian(losses)  # [batch, tasks, tasks, batch]
            weights = weighting(gramian)  # [batch, tasks]
            losses.backward(weights)
            optimizer.step()
            totals += losses.detach().sum(dim=0)
        per_task_history.append((totals / len(inputs)).tolist())
        print(
            f"epoch {epoch + 1:3d}  task 1 loss {per_task_history[-1][0]:.4f}  "
            f"task 2 loss {per_task_history[-1][1]:.4f}"
        )
    print(f"generalized Gramian shape of the last batch: {list(gramian.shape)}")
    return per_task_history[0], per_task_history[-1]


if __name__ == "__main__":
    main()
