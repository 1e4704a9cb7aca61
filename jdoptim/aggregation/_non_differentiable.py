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
    def forward(ctx: Any, result: Tensor, source: Tensor, name: str) -> Tensor:
        ctx.name = name
        return result.view_as(result)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> Any:
        raise NonDifferentiableError(
            f"{ctx.name} is not differentiable: its output cannot be backpropagated through. "
            "Detach its input, or use a differentiable aggregator such as Mean or MGDA."
        )


def make_non_differentiable(result: Tensor, source: Tensor, name: str) -> Tensor:
    """Returns ``result`` unchanged, but raising :class:`NonDifferentiableError` on backward.

    The guard is attached whenever ``result`` or its ``source`` (the input it was computed from)
    requires grad, so a result computed outside autograd (e.g. by a numpy solver) from an input
    that requires grad still refuses to be backpropagated through instead of acting as a constant.
    """
    if not (result.requires_grad or source.requires_grad):
        return result
    guarded: Tensor = _RaiseOnBackward.apply(result, source, name)  # type: ignore[no-untyped-call]
    return guarded
