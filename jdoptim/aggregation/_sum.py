"""Sum: the sum of the rows of the Jacobian."""

from __future__ import annotations

from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting


class SumWeighting(Weighting):
    r"""Unit weights :math:`w = \mathbb{1}`.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import SumWeighting
        >>> SumWeighting()(torch.eye(3))
        tensor([1., 1., 1.])
    """

    # The weights do not depend on the scale of the Gramian.
    gramian_rescaling = "any"

    def forward(self, gramian: Tensor, /) -> Tensor:
        return gramian.new_ones(gramian.shape[0])


class Sum(GramianWeightedAggregator):
    r"""Sum of the rows: :math:`A(J) = J^\top \mathbb{1}`, the gradient of the summed loss.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import Sum
        >>> Sum()(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
        tensor([2., 2., 2.])
    """

    def __init__(self) -> None:
        super().__init__(SumWeighting())
