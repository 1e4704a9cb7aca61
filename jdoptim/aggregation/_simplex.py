"""Euclidean projection onto the probability simplex, safe at any scale."""

from __future__ import annotations

import torch
from torch import Tensor


def project_onto_simplex(point: Tensor) -> Tensor:
    """The point of ``{w >= 0, sum(w) = 1}`` nearest to the 1-D ``point``.

    The point is first shifted by its maximum, which changes nothing in exact arithmetic but
    keeps huge entries from cancelling to an all-zero "projection".
    """
    shifted = point - point.max()
    ordered = torch.sort(shifted, descending=True).values
    cumulative = ordered.cumsum(0) - 1.0
    ranks = torch.arange(1, point.shape[0] + 1, dtype=point.dtype, device=point.device)
    support = ordered - cumulative / ranks > 0
    k = int(support.nonzero().max()) + 1
    threshold = cumulative[k - 1] / k
    return (shifted - threshold).clamp(min=0.0)
