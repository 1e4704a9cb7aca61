"""What every dual-cone solver does before and after its own work.

Before: the problems are moved to float64 (on the Gramian's device), ``G`` is symmetrised and
rescaled to ``max(diag G) = 1`` (the minimiser does not change when ``G`` is scaled), and three
cases are answered without any solver:

- no problem (``k = 0``) or no objective (``m = 0``): an empty or zero solution;
- a non-finite ``G`` or bound: NaN, so that the caller's output is non-finite (and, e.g.,
  ``GradScaler`` skips the step) instead of a solver hanging on it;
- ``G = 0`` (``max(diag G) ≤ 0`` for a Gramian): every feasible ``v`` is optimal; the answer is the
  limit of the solutions for ``G = εI``, the feasible point of least norm ``max(u, 0)``.

After: the solutions are cast back to the Gramian's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Problem:
    """``k`` dual-cone problems on one Gramian, ready for a solver.

    Attributes:
        gramian: ``[m, m]`` float64, symmetric, ``max(diag G) = 1``.
        lower_bounds: ``[k, m]`` float64, on the Gramian's device.
        input_dtype: the dtype of the Gramian the caller passed; its precision decides which
            eigenvalues of ``G`` are rounding noise (see :mod:`._jitter`).
    """

    gramian: Tensor
    lower_bounds: Tensor
    input_dtype: torch.dtype


def prepare(gramian: Tensor, lower_bounds: Tensor) -> Problem | Tensor:
    """The problem in the form every solver takes, or its float64 answer when none is needed."""
    g = gramian.detach().to(torch.float64)
    u = lower_bounds.detach().to(device=gramian.device, dtype=torch.float64)
    k, m = u.shape
    if k == 0 or m == 0:
        return torch.zeros_like(u)
    if not bool(torch.isfinite(g).all() & torch.isfinite(u).all()):
        return torch.full_like(u, torch.nan)
    g = (g + g.mT) / 2.0
    scale = g.diagonal().amax()
    if not bool(scale > 0.0):
        return u.clamp(min=0.0)
    return Problem(g / scale, u, gramian.dtype)


def finish(solution: Tensor, gramian: Tensor) -> Tensor:
    """``solution`` on the Gramian's device and with its dtype."""
    return solution.to(device=gramian.device, dtype=gramian.dtype)
