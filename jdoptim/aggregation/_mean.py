"""Mean: the average of the rows of the Jacobian."""

from __future__ import annotations

from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting


class MeanWeighting(Weighting):
    r"""Uniform weights :math:`w = \frac{1}{m} \mathbb{1}`.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import MeanWeighting
        >>> MeanWeighting()(torch.eye(2))
        tensor([0.5000, 0.5000])
    """

    # The weights do not depend on the scale of the Gramian.
    gramian_rescaling = "any"

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        # max(m, 1): a Jacobian without rows (e.g. of an empty loss tensor) aggregates to zeros.
        return gramian.new_full((m,), 1.0 / max(m, 1))


class Mean(GramianWeightedAggregator):
    r"""Average of the rows: :math:`A(J) = \frac{1}{m} J^\top \mathbb{1}`.

    The plain gradient of the mean loss; the baseline every other aggregator is compared with.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import Mean
        >>> Mean()(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
        tensor([1., 1., 1.])
    """

    def __init__(self) -> None:
        super().__init__(MeanWeighting())
