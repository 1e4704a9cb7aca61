"""Random: random positive weights summing to 1, drawn anew at every call."""

from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting


class RandomWeighting(Weighting):
    r"""Random weights :math:`w = \operatorname{softmax}(z)`, :math:`z \sim \mathcal{N}(0, I_m)`.

    A new draw is made at every call, with torch's global random number generator on the
    Gramian's device, so ``torch.manual_seed`` makes it reproducible. The weights are positive
    and sum to 1. From "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning" (Lin et al., 2022).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import RandomWeighting
        >>> _ = torch.manual_seed(0)
        >>> RandomWeighting()(torch.eye(3))
        tensor([0.8446, 0.1349, 0.0205])
    """

    # The weights do not depend on the scale of the Gramian.
    gramian_rescaling = "any"

    def forward(self, gramian: Tensor, /) -> Tensor:
        draw = torch.randn(gramian.shape[0], device=gramian.device, dtype=gramian.dtype)
        return draw.softmax(dim=0)


class Random(GramianWeightedAggregator):
    r"""Random convex combination of the rows: :math:`A(J) = J^\top \operatorname{softmax}(z)`.

    :math:`z \sim \mathcal{N}(0, I_m)` is drawn anew at every call with torch's global random
    number generator (see :class:`RandomWeighting`). From "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning" (Lin et al., 2022).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import Random
        >>> _ = torch.manual_seed(0)
        >>> Random()(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
        tensor([-2.6229,  1.0000,  1.0000])
    """

    def __init__(self) -> None:
        super().__init__(RandomWeighting())
