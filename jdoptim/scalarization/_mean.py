"""Mean: the arithmetic mean of the losses."""

from __future__ import annotations

from torch import Tensor

from ._base import Scalarizer


class Mean(Scalarizer):
    r"""The arithmetic mean :math:`\frac{1}{m} \sum_i L_i` of all the entries of the values.

    The gradient is :math:`1/m` for every entry. An empty tensor gives NaN, as
    :func:`torch.mean` does.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import Mean
        >>> Mean()(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        tensor(3.)
    """

    def forward(self, values: Tensor, /) -> Tensor:
        return values.mean()
