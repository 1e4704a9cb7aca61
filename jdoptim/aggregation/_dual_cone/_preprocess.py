"""What every dual-cone solver does before and after its own work.

Before: the problems are moved to float64 (on the Gramian's device), ``G`` is symmetrised and
each objective is rescaled by a power of two ``s_i`` so that ``diag G`` lies in ``[1/2, 2]``:
``G ← S⁻¹ G S⁻¹`` and ``u ← S u`` with ``S = diag(s)``, whose solution is ``S v`` (the same
problem in the variable ``S v``). Powers of two make this exact in floating point (``v = u``
stays bit for bit ``u``), and the rescaled problem no longer depends on how differently the rows
of the Jacobian are scaled (``1e-10`` next to ``1e15``): every tolerance and jitter of the
solvers is then relative to each row's own norm. A zero row keeps ``s_i`` of the largest one.
Three cases are answered without any solver:

- no problem (``k = 0``) or no objective (``m = 0``): an empty or zero solution;
- a non-finite ``G`` or bound: NaN, so that the caller's output is non-finite (and, e.g.,
  ``GradScaler`` skips the step) instead of a solver hanging on it;
- ``G = 0`` (``max(diag G) ≤ 0`` for a Gramian): every feasible ``v`` is optimal; the answer is the
  limit of the solutions for ``G = εI``, the feasible point of least norm ``max(u, 0)``.

After: the scaling is undone (``v = S⁻¹ y``) and the solutions are cast back to the Gramian's
dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._jitter import LAST_RUNG, first_jitter, is_positive_definite, jittered
from ._problem import Problem


def prepare(gramian: Tensor, lower_bounds: Tensor) -> Problem | Tensor:
    """The problem in the form every solver takes, or its float64 answer when none is needed."""
    u = lower_bounds.detach().to(device=gramian.device, dtype=torch.float64)
    k, m = u.shape
    if k == 0 or m == 0:
        return torch.zeros_like(u)
    g = _symmetric(gramian)
    diagonal = g.diagonal()
    # One synchronisation for the three checks: NaN and inf propagate through the maxima.
    largest_entry, largest_bound, largest = torch.stack(
        (g.abs().amax(), u.abs().amax(), diagonal.amax())
    ).tolist()
    if not (math.isfinite(largest_entry) and math.isfinite(largest_bound)):
        return torch.full_like(u, torch.nan)
    if not largest > 0.0:
        return u.clamp(min=0.0)
    g, scales = _rescaled(g, diagonal, largest)
    return Problem(g, u * scales, scales, gramian.dtype, first_jitter(g, gramian.dtype))


def _rescaled(g: Tensor, diagonal: Tensor, largest: float) -> tuple[Tensor, Tensor]:
    """``S⁻¹ G S⁻¹`` and the powers of two ``s``: ``s = 2^round(log2(G_ii) / 2)``, so that
    ``G_ii / s²`` lies in ``[1/2, 2]`` (a zero row takes the scale of the largest)."""
    exponents = torch.round(torch.log2(torch.where(diagonal > 0.0, diagonal, largest)) / 2.0)
    scales = torch.exp2(exponents)
    return g / scales / scales.unsqueeze(1), scales


def accepted_by_the_solvers(gramian: Tensor) -> bool:
    """Whether the solvers accept the finite ``gramian`` rather than raise
    :class:`DualConeSolverError`: rescaled, it is positive definite on the last rung of the
    jitter ladder; a zero Gramian needs no solver."""
    g = _symmetric(gramian)
    diagonal = g.diagonal()
    largest = float(diagonal.amax())
    if not largest > 0.0:
        return True
    scaled, _ = _rescaled(g, diagonal, largest)
    return is_positive_definite(jittered(scaled, LAST_RUNG))


def _symmetric(gramian: Tensor) -> Tensor:
    """``(G + Gᵀ) / 2`` in float64, the matrix every solver sees."""
    g = gramian.detach().to(torch.float64)
    return (g + g.mT) / 2.0


def finish(solution: Tensor, gramian: Tensor) -> Tensor:
    """``solution`` on the Gramian's device and with its dtype."""
    return solution.to(device=gramian.device, dtype=gramian.dtype)
