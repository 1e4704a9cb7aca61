"""Guard that turns backpropagation through a non-differentiable aggregator into a clear error."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class NonDifferentiableError(RuntimeError):
    """Raised when gradients are backpropagated through a non-differentiable aggregator.

    Aggregators such as :class:`~jdoptim.aggregation.UPGrad` solve an optimisation problem whose
    solution is not differentiated; rather than returning a silently wrong gradient, the
    backward pass raises this error.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import UPGrad, NonDifferentiableError
        >>> matrix = torch.tensor([[1.0, 2.0], [3.0, -4.0]], requires_grad=True)
        >>> try:
        ...     UPGrad()(matrix).sum().backward()
        ... except NonDifferentiableError:
        ...     print("not differentiable")
        not differentiable
    """


class _RaiseOnBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, name: str) -> Tensor:
        ctx.name = name
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> Any:
        raise NonDifferentiableError(
            f"{ctx.name} is not differentiable: its output cannot be backpropagated through. "
            "Detach its input, or use a differentiable aggregator such as Mean or MGDA."
        )


def make_non_differentiable(tensor: Tensor, name: str) -> Tensor:
    """Returns ``tensor`` unchanged, but raising :class:`NonDifferentiableError` on backward."""
    if not tensor.requires_grad:
        return tensor
    result: Tensor = _RaiseOnBackward.apply(tensor, name)  # type: ignore[no-untyped-call]
    return result
