"""Random: random positive weights summing to 1, drawn anew at every call."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Scalarizer


class Random(Scalarizer):
    r"""Random loss weighting: :math:`\sum_i w_i L_i` with
    :math:`w = \operatorname{softmax}(z)`, :math:`z \sim \mathcal{N}(0, I_m)`.

    Every call draws the m numbers :math:`z` in one call of :func:`torch.randn`, with torch's
    global random number generator, in the dtype and on the device of the values, so
    ``torch.manual_seed`` makes the sequence of weights reproducible (float64 values draw from
    a different stream than float32 ones). The weights are positive, sum to 1 and do not depend
    on the values; a single loss gets weight 1. From "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning" (Lin et al., 2022).

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import Random
        >>> _ = torch.manual_seed(0)
        >>> losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        >>> Random()(losses).backward()
        >>> weights = losses.grad  # the weights drawn for this call
        >>> bool((weights > 0).all()), round(weights.sum().item(), 4)
        (True, 1.0)
    """

    def forward(self, values: Tensor, /) -> Tensor:
        draw = torch.randn(values.numel(), dtype=values.dtype, device=values.device)
        weights = draw.softmax(dim=0).reshape(values.shape)
        return (weights * values).sum()
