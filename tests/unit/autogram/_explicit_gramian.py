"""Reference Gramians computed from an explicit Jacobian (one autograd.grad per loss)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def explicit_jacobian(output: Tensor, parameters: list[nn.Parameter]) -> Tensor:
    """The Jacobian ``[output.numel(), n]`` of ``output`` w.r.t. ``parameters``."""
    rows = []
    for loss in output.reshape(-1):
        grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    torch.zeros(p.numel(), dtype=output.dtype) if g is None else g.reshape(-1)
                    for g, p in zip(grads, parameters)
                ]
            )
        )
    return torch.stack(rows)


def explicit_gramian(output: Tensor, parameters: list[nn.Parameter]) -> Tensor:
    """The generalized Gramian ``[*output.shape, *reversed(output.shape)]``."""
    jacobian = explicit_jacobian(output, parameters)
    gramian = jacobian @ jacobian.T
    shape = tuple(output.shape)
    k = len(shape)
    return gramian.reshape(shape + shape).permute(
        list(range(k)) + list(range(2 * k - 1, k - 1, -1))
    )


def trainable(*modules: nn.Module) -> list[nn.Parameter]:
    """The distinct parameters requiring grad of ``modules``."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for parameter in module.parameters():
            if parameter.requires_grad:
                seen.setdefault(id(parameter), parameter)
    return list(seen.values())
