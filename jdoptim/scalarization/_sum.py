"""Sum: the sum of the losses."""

from __future__ import annotations

from torch import Tensor

from ._base import Scalarizer


class Sum(Scalarizer):
    r"""The sum :math:`\sum_i L_i` of all the entries of the values.

    The gradient is 1 for every entry. An empty tensor gives 0.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import Sum
        >>> Sum()(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        tensor(12.)
    """

    def forward(self, values: Tensor, /) -> Tensor:
        return values.sum()
