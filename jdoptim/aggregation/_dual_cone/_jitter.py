r"""The jitter ladder shared by the dual-cone solvers, and the precision it follows.

A solver may fail on ``G`` (rescaled by :mod:`._preprocess` to a diagonal in ``[1/2, 2]``):
quadprog's dual path needs an accurately invertible ``G``, the pivoting of the torch solver can
meet a singular free block. Each then retries on ``G + δI`` for the next ``δ`` of one ladder,
which ends with ``δ = 1`` (``G + I`` is well conditioned for every positive semi-definite ``G``).
Rungs where ``G + δI`` is not positive definite are skipped; if none is left the matrix is not a
Gramian and :class:`DualConeSolverError` is raised.

Where the ladder starts follows the precision of the caller's Gramian, not the float64 in which
the solvers compute. A Gramian of dtype ``d`` carries rounding errors of about
``ε_d = finfo(d).eps`` relative to its rows' norms, so its eigenvalues (after the rescaling) are
uncertain by up to ``τ = m · ε_d``: ``G`` is *numerically singular* when ``G - τI`` is not
positive definite (one Cholesky). A float32 Gramian converted to float64 keeps the float32
``τ``, so float32 rounding noise is never taken for curvature.

- ``G`` numerically positive definite (UPGrad and DualProj with ``reg_eps > 0``, unless a
  float32 Gramian has ``m ε₃₂`` above about ``reg_eps / 2``): the ladder starts at ``δ = 0``, the
  exact problem.
- ``G`` numerically singular (``reg_eps = 0`` with rank-deficient or ``m > n`` Jacobians): the
  ladder starts at ``δ₀ = max(2τ, 10⁶ ε₆₄)``. ``G + δ₀I`` is positive definite whatever the
  rounding noise, and the ``10⁶ ε₆₄ ≈ 2.2·10⁻¹⁰`` bound keeps the float64 solves accurate to about
  ``10⁻⁶`` in the directions where ``G`` vanishes. The solution ``v`` of ``G + δ₀I`` satisfies
  the optimality condition ``(G + δ₀I) v ≥ 0``; undoing the rescaling ``s_j²`` (within a factor
  two of the caller's ``G_jj = ‖g_j‖²``), ``(G v)_j ≥ -2 δ₀ ‖g_j‖² v_j``: non-conflict, row by
  row, up to about ``4.4·10⁻¹⁰`` relative in float64 and ``4 m ε₃₂`` in float32 (the precision
  of the input itself).

(quadprog does not use the ladder for a numerically singular ``G``: it solves it exactly in
its range, and falls back to the ladder only if that fails.) The rungs after the first are only
for the solvers: when a solver succeeds on a later rung, the
answer is *polished* back to the first one by the torch solver's pivoting started from that
answer's free indices (a primal method that needs no inverse of ``G``), so that the guarantee
above holds whichever solver ran. A numerically singular ``G`` (first rung ``δ₀``) of 64
objectives or more is solved on the well-conditioned rung ``10⁻⁴`` first and polished down to
``δ₀`` the same way: on ``δ₀`` itself the pivoting stalls and its fallback moves one index per
step (seconds to minutes from m = 256 on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ._errors import not_a_gramian
from ._problem import Problem

# Smallest first rung of a numerically singular G: below it, rounding in float64 solves is
# amplified by more than 1 / (10⁶) in the directions where G vanishes.
_MIN_JITTER = 1e6 * torch.finfo(torch.float64).eps
# Each rung is this many times the previous one, up to the last.
_RUNG_FACTOR = 100.0
#: The rung on which a numerically singular ``G`` is solved first (see :func:`_warm_started`):
#: about the regularisation UPGrad and DualProj add by default, where the solvers are fast.
WARM_START_JITTER = 1e-4
#: Fewest objectives for that warm start: below, its two solves cost more than the one they
#: replace (measured, float64 Gramians of random [m, m/2] Jacobians, three seeds: 0.7-1.9 × the
#: time at m = 8 to 48, 0.3-1.2 × at m = 64 and 96, 0.1-0.6 × from m = 128).
WARM_START_MIN_OBJECTIVES = 64
#: The last rung: ``G + I`` is well conditioned for every positive semi-definite ``G`` (with a
#: diagonal in ``[1/2, 2]``); a matrix that is not positive definite there is not a Gramian.
LAST_RUNG = 1.0


class Attempt(NamedTuple):
    """What a solver returned on one rung: the solutions (NaN where it failed), the steps it
    took and whether it converged."""

    solution: Tensor
    iterations: int
    converged: bool

    @property
    def succeeded(self) -> bool:
        return self.converged and bool(torch.isfinite(self.solution).all())


#: A solver on one rung: ``(jittered G, lower bounds) -> Attempt``.
Core = Callable[[Tensor, Tensor], Attempt]
#: Polishes a solution on a coarser rung: ``(G on the first rung, lower bounds, solution)``.
Polish = Callable[[Tensor, Tensor, Tensor], Attempt]


def noise_level(dtype: torch.dtype, m: int) -> float:
    """``τ = m · ε``: how much rounding in a Gramian of ``dtype`` may move its eigenvalues,
    relative to its (rescaled, unit-order) diagonal."""
    return m * torch.finfo(dtype).eps


def is_numerically_singular(gramian: Tensor, noise: float) -> bool:
    """Whether the smallest eigenvalue of ``gramian`` is within ``noise`` of zero (or below)."""
    identity = torch.eye(gramian.shape[0], device=gramian.device, dtype=gramian.dtype)
    _, info = torch.linalg.cholesky_ex(gramian - noise * identity)
    return bool(info != 0)


def first_jitter(gramian: Tensor, input_dtype: torch.dtype) -> float:
    """The first rung for ``gramian`` (rescaled, float64) given as ``input_dtype``: ``0``
    unless it is numerically singular, then ``δ₀ = max(2τ, 10⁶ ε₆₄)``."""
    noise = noise_level(input_dtype, gramian.shape[0])
    if not is_numerically_singular(gramian, noise):
        return 0.0
    return max(2.0 * noise, _MIN_JITTER)


def ladder(problem: Problem) -> tuple[float, ...]:
    """The jitters to try in turn on ``problem``; the first is the problem actually solved."""
    first = problem.first_jitter
    jitter = first * _RUNG_FACTOR if first > 0.0 else _MIN_JITTER
    rungs = [first]
    while jitter < LAST_RUNG:
        rungs.append(jitter)
        jitter *= _RUNG_FACTOR
    rungs.append(LAST_RUNG)
    return tuple(rungs)


def jittered(gramian: Tensor, jitter: float) -> Tensor:
    """``G + jitter · I`` (``G`` itself for a zero jitter)."""
    if jitter == 0.0:
        return gramian
    identity = torch.eye(gramian.shape[0], device=gramian.device, dtype=gramian.dtype)
    return gramian + jitter * identity


def is_positive_definite(gramian: Tensor) -> bool:
    """Whether the Cholesky factorisation of ``gramian`` succeeds."""
    return bool(torch.linalg.cholesky_ex(gramian)[1] == 0)


def solve_on_ladder(problem: Problem, core: Core, polish: Polish | None) -> Attempt:
    """Runs ``core`` on each rung in turn until it succeeds; an answer from a later rung is
    polished back to the first. Rungs where ``G + δI`` is not positive definite are skipped, so
    that no solver is given a non-convex problem. Raises :class:`DualConeSolverError` if every
    rung fails (only for a matrix far from positive semi-definite); a last attempt that is
    finite but did not converge (the torch solver's cap on its steps) is returned as it is.

    A numerically singular ``G`` with ``WARM_START_MIN_OBJECTIVES`` objectives or more is first
    solved on the well-conditioned rung ``WARM_START_JITTER`` and polished back to its first
    rung (see :func:`_warm_started`)."""
    if (
        polish is not None
        and 0.0 < problem.first_jitter <= WARM_START_JITTER / _RUNG_FACTOR
        and problem.gramian.shape[0] >= WARM_START_MIN_OBJECTIVES
    ):
        warm = _warm_started(problem, core, polish)
        if warm is not None:
            return warm
    rungs = ladder(problem)
    iterations = 0
    attempt: Attempt | None = None
    first: Tensor | None = None  # G on the first rung where it is positive definite
    for jitter in rungs:
        gramian = jittered(problem.gramian, jitter)
        # A zero first rung was chosen because G - τI is positive definite: no check needed.
        if jitter > 0.0 and not is_positive_definite(gramian):
            continue
        first = gramian if first is None else first
        attempt = core(gramian, problem.lower_bounds)
        iterations += attempt.iterations
        if not attempt.succeeded:
            continue
        if gramian is not first and polish is not None:
            polished = polish(first, problem.lower_bounds, attempt.solution)
            iterations += polished.iterations
            if polished.succeeded:
                attempt = polished
        return Attempt(attempt.solution, iterations, True)
    if attempt is None:
        raise not_a_gramian("it is not positive definite")
    if bool(torch.isfinite(attempt.solution).all()):
        return Attempt(attempt.solution, iterations, False)
    raise not_a_gramian("no jitter made it solvable")


def _warm_started(problem: Problem, core: Core, polish: Polish) -> Attempt | None:
    """The answer on the first rung of a numerically singular ``G``, solved first on the rung
    ``WARM_START_JITTER`` and polished from there (the pivoting started from its free sets), or
    None if either fails (then the ladder runs from its first rung).

    On the first rung (``G + δ₀I``, a condition number of about ``10¹⁰``) the guess of the free
    sets is poor and the pivoting stalls, leaving the active-set method to move one index per
    step: measured on a 2-core CPU (UPGrad's programs, Gramians of random ``[m, n]`` Jacobians,
    ``reg_eps = 0``), 2.7 s at ``[256, 128]``, 23 s at ``[512, 256]`` and more than 150 s at
    ``[768, 300]``. On ``G + 10⁻⁴I`` the pivoting mostly converges in a few steps, and the
    free sets it finds are those of the first rung but for a few: 0.3, 1.8 and 4.7 s there,
    0.1 to 0.8 s at ``[256, 200]``, ``[384, 100]``, ``[512, 128]`` and ``[512, 400]``. Over
    twelve more Gramians (``[128, 64]``, ``[160, 40]``, ``[192, 96]``, four seeds each) it took
    0.04 to 1.5 s instead of 0.07 to 3.2 s: 1.1 to 14 × faster but once (1.46 against 1.29 s,
    where both rungs needed the active-set method). Going down in more rungs is slower (started
    from the free sets of ``G + 10⁻³I``, the pivoting on ``G + 10⁻⁴I`` stalled). Where the
    polish does not converge, the ladder runs as before."""
    warm = jittered(problem.gramian, WARM_START_JITTER)
    if not is_positive_definite(warm):
        return None
    attempt = core(warm, problem.lower_bounds)
    if not attempt.succeeded:
        return None
    first = jittered(problem.gramian, problem.first_jitter)
    polished = polish(first, problem.lower_bounds, attempt.solution)
    if not polished.succeeded:
        return None
    return Attempt(polished.solution, attempt.iterations + polished.iterations, True)
