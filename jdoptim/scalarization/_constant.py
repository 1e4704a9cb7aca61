"""Constant: the weighted sum of the losses with fixed weights."""

from __future__ import annotations

from torch import Tensor

from ._base import Scalarizer
from ._checks import check_same_shape, config_tensor


class Constant(Scalarizer):
    r"""The linear scalarization :math:`\sum_i w_i L_i` with fixed weights :math:`w`.

    The gradient with respect to the losses is :math:`w` itself.

    Args:
        weights: a real tensor of any shape and any sign. The values given at call time must
            have exactly its shape. A detached copy is stored as the buffer ``weights`` (so
            ``.to(device)`` moves it); it may be reassigned between calls.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import Constant
        >>> scalarizer = Constant(torch.tensor([1.0, 0.5]))
        >>> scalarizer(torch.tensor([2.0, 4.0]))
        tensor(4.)
    """

    weights: Tensor

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", config_tensor("weights", weights, optional=False))

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(values, self.weights, "weights")
        return (self.weights * values).sum()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights!r})"
