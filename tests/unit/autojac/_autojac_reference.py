"""Reference Jacobians for the autojac tests: one ``torch.autograd.grad`` call per scalar output."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def explicit_jacobians(outputs: Sequence[Tensor], inputs: Sequence[Tensor]) -> list[Tensor]:
    """The Jacobian of every element of ``outputs`` w.r.t. each input, one backward per element."""
    flat = torch.cat([output.reshape(-1) for output in outputs])
    rows: list[list[Tensor]] = [[] for _ in inputs]
    for i in range(flat.numel()):
        grads = torch.autograd.grad(flat[i], list(inputs), retain_graph=True, allow_unused=True)
        for row, grad, input in zip(rows, grads, inputs):
            row.append(torch.zeros_like(input) if grad is None else grad)
    return [torch.stack(row) for row in rows]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 3))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 2),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 2),
    )


class SharedSubmodule(nn.Module):
    """One linear block used twice, plus a parameter that is never used."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.unused = nn.Parameter(torch.randn(3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.block(torch.tanh(self.block(x)))))
