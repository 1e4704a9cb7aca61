"""Conflict diagnostics of a parameter group, computed on request from its Gramian."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class GroupDiagnostics(NamedTuple):
    """Conflict diagnostics of one parameter group, from the Gramian of its Jacobian.

    Attributes:
        cosine_similarities: ``[m, m]``, the cosine similarity between the gradients of every
            pair of objectives (0 when one of them is zero).
        n_conflicting_pairs: the number of pairs ``i < j`` whose gradients have a negative
            inner product.

    Example:
        >>> import torch
        >>> from jdoptim import JacobianOptimizer
        >>> weight = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
        >>> opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1))
        >>> opt.backward([weight[0] * 2, weight.sum() - weight[0] * 3])  # gradients (2, 0), (-2, 1)
        >>> (diagnostics,) = opt.diagnostics()
        >>> diagnostics.n_conflicting_pairs
        1
        >>> round(diagnostics.cosine_similarities[0, 1].item(), 4)
        -0.8944
    """

    cosine_similarities: Tensor
    n_conflicting_pairs: int


def diagnose(gramian: Tensor) -> GroupDiagnostics:
    """The diagnostics of a square Gramian ``[m, m]``."""
    norms = gramian.diagonal().clamp(min=0).sqrt()
    outer = norms[:, None] * norms[None, :]
    cosine = torch.where(outer > 0, gramian / outer.clamp(min=torch.finfo(gramian.dtype).tiny), 0.0)
    cosine = cosine.clamp(-1.0, 1.0)
    m = gramian.shape[0]
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool, device=gramian.device), diagonal=1)
    conflicting = int(((gramian < 0) & upper).sum())
    return GroupDiagnostics(cosine, conflicting)
