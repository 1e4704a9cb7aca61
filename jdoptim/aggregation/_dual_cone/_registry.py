"""The dual-cone solvers by name, the ``"auto"`` policy, and the entry point that checks input.

``"auto"`` is the default everywhere (UPGrad, DualProj, their weightings and
:func:`solve_dual_cone`). On the CPU it takes the exact closed forms for one or two objectives,
then quadprog up to ``_AUTO_QUADPROG_MAX_M`` objectives, where its per-problem solves are
faster, up to ``_AUTO_ILL_CONDITIONED_QUADPROG_MAX_M`` for an ill-conditioned one (a small
Cholesky pivot: the torch solver's guess converges slowly there), and up to
``_AUTO_SINGULAR_QUADPROG_MAX_M`` for a numerically singular Gramian, which quadprog solves
exactly in its range while the torch pivoting stalls (unless its rank is high: few flat
directions, a large range); the batched torch solver everywhere else (more objectives, or an
accelerator, where it avoids a copy to the host).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._closed_form import solve_closed_form
from ._errors import not_a_gramian
from ._jitter import WARM_START_JITTER, jittered
from ._preprocess import accepted_by_the_solvers, finish, prepare
from ._problem import Problem
from ._quadprog import solve_with_quadprog
from ._torch import solve_dual_cone_torch

#: A dual-cone solver: ``(gramian [m, m], lower_bounds [k, m]) -> solutions [k, m]``.
DualConeSolver = Callable[[Tensor, Tensor], Tensor]

#: The solver that UPGrad, DualProj, their weightings and :func:`solve_dual_cone` use by default.
DEFAULT_SOLVER = "auto"

# On the CPU, quadprog's per-problem solves beat the batched torch solver's fixed cost up to about
# this many objectives (measured on a 2-core CPU, one thread, UPGradWeighting on the Gramians of
# random [m, 1000] Jacobians: 0.29 vs 0.83 ms at m = 8, 0.94 vs 0.95 ms at m = 24, 1.9 vs 1.0 ms
# at m = 32).
_AUTO_QUADPROG_MAX_M = 24

# On the CPU, quadprog in the range of a numerically singular Gramian (reg_eps = 0 with m > n or
# a rank-deficient Jacobian) beats the torch pivoting up to about this many objectives (measured
# on a loaded 2-core CPU, one thread, UPGradWeighting(reg_eps=0) on the Gramians of random
# [m, m/2] Jacobians: 2.0 vs 22 ms at m = 32, 25 vs 166 ms at m = 64, 350 vs 650 ms at m = 128;
# 4.5 vs 0.7 s for [250, 161]) ...
_AUTO_SINGULAR_QUADPROG_MAX_M = 128
# ... unless the rank r of G is high: quadprog's problem in the range has r dimensions, while the
# torch pivoting is quick where few directions are flat. Measured (2-core CPU, 2 threads,
# UPGradWeighting(reg_eps=0) on the Gramians of random [m, n] Jacobians, float32 and float64,
# four to six seeds; quadprog / torch): r = 0.75 m: 14-16 / 6-7 ms at m = 64, 66-85 / 13-21 ms
# at m = 96, 193-272 / 24-43 ms at m = 128 (r = 0.78-0.88 m: 200-360 / 16-26 ms); r = 0.625 m:
# torch 1.4-6 × faster but once 1.9 × slower; r = m / 2: quadprog up to 9 × faster (about even
# at m = 128); below 64 objectives the two about even at r = 0.75 m ([48, 36]: 5-11 / 5-11 ms)
# and quadprog twice as fast at [32, 24]. So from _AUTO_SINGULAR_TORCH_MIN_M objectives, a rank
# above _AUTO_SINGULAR_TORCH_MIN_RANK · m sends a singular G to the torch solver. The rank
# counts the Cholesky pivots of G + δ₀I above the rung on which the torch solver starts such a G
# (UPGrad's default regularisation, where it is tuned, see _jitter.WARM_START_JITTER):
# directions flatter than that are what slows it down (a Jacobian with singular values spread
# from 1 to 10⁻⁶ counts about 40 of 100 nonzero ones, and quadprog is 2 × faster there).
_AUTO_SINGULAR_TORCH_MIN_M = 64
_AUTO_SINGULAR_TORCH_MIN_RANK = 0.7

# On the CPU, quadprog also beats the torch solver up to about this many objectives when G is
# positive definite but ill-conditioned (rank-deficient Jacobians with reg_eps > 0), where the
# torch solver's guess of the free sets converges slowly and more pivoting steps follow
# (interleaved, UPGradWeighting on the Gramians of random [m, m/2] Jacobians, one and two
# threads alike, after the torch solver's speed-ups of 2026-12-02: torch 3.1 times quadprog's
# time at m = 16, 1.5 at m = 24, 1.0 at m = 32, 0.6 at m = 40, 0.5 at m = 48).
_AUTO_ILL_CONDITIONED_QUADPROG_MAX_M = 32
# G (rescaled to a unit diagonal) counts as ill-conditioned when the smallest pivot of its
# Cholesky factorisation is below this: its smallest eigenvalue is then below it too. The
# Gramians of rank-deficient Jacobians with reg_eps = 1e-4 have pivots of a few 1e-3 at these
# sizes, those of full-rank ones above 2e-2.
_ILL_CONDITIONED_PIVOT = 1e-2


def solve_auto(gramian: Tensor, lower_bounds: Tensor) -> Tensor:
    """On the CPU: closed forms for one or two objectives, quadprog up to
    ``_AUTO_QUADPROG_MAX_M`` (``_AUTO_ILL_CONDITIONED_QUADPROG_MAX_M`` for an ill-conditioned
    Gramian, ``_AUTO_SINGULAR_QUADPROG_MAX_M`` for a singular one unless its rank is high); the
    batched torch solver everywhere else."""
    m = gramian.shape[0]
    if gramian.device.type == "cpu" and m <= _AUTO_QUADPROG_MAX_M:
        if 1 <= m <= 2 and lower_bounds.shape[0] > 0:
            solutions = solve_closed_form(gramian, lower_bounds)
            if solutions is not None:
                return solutions
        return solve_with_quadprog(gramian, lower_bounds)
    if gramian.device.type == "cpu" and m <= _AUTO_SINGULAR_QUADPROG_MAX_M:
        problem = prepare(gramian, lower_bounds)
        if isinstance(problem, Tensor):
            return finish(problem, gramian)
        if problem.first_jitter > 0.0:
            if m >= _AUTO_SINGULAR_TORCH_MIN_M and _has_high_rank(problem):
                return solve_dual_cone_torch(gramian, lower_bounds, problem=problem)
            return solve_with_quadprog(gramian, lower_bounds, problem=problem)
        if m <= _AUTO_ILL_CONDITIONED_QUADPROG_MAX_M and _is_ill_conditioned(problem.gramian):
            return solve_with_quadprog(gramian, lower_bounds, problem=problem)
        return solve_dual_cone_torch(gramian, lower_bounds, problem=problem)
    return solve_dual_cone_torch(gramian, lower_bounds)


def _has_high_rank(problem: Problem) -> bool:
    """Whether more than ``_AUTO_SINGULAR_TORCH_MIN_RANK · m`` Cholesky pivots of the singular
    problem's first rung ``G + δ₀I`` (rescaled to a unit-order diagonal) exceed
    ``WARM_START_JITTER``."""
    pivots = _cholesky_pivots(jittered(problem.gramian, problem.first_jitter))
    if pivots is None:
        return False
    rank = int((pivots > WARM_START_JITTER).sum())
    return rank > _AUTO_SINGULAR_TORCH_MIN_RANK * pivots.shape[0]


def _is_ill_conditioned(gramian: Tensor) -> bool:
    """Whether the smallest Cholesky pivot of ``gramian`` (unit-order diagonal, positive
    definite within its precision) is below ``_ILL_CONDITIONED_PIVOT``."""
    pivots = _cholesky_pivots(gramian)
    return pivots is None or bool(pivots.amin() < _ILL_CONDITIONED_PIVOT)


def _cholesky_pivots(gramian: Tensor) -> Tensor | None:
    """The pivots ``L_ii²`` of the Cholesky factorisation of ``gramian``, or ``None`` where it
    fails (not positive definite, or not finite)."""
    factor, info = torch.linalg.cholesky_ex(gramian)
    if int(info) != 0:
        return None
    pivots: Tensor = factor.diagonal().square()
    return pivots


_SOLVERS: dict[str, DualConeSolver] = {
    "auto": solve_auto,
    "quadprog": solve_with_quadprog,
    "torch": solve_dual_cone_torch,
}


def check_solver(solver: str) -> None:
    """Raises unless ``solver`` names a registered dual-cone solver."""
    if not isinstance(solver, str):
        raise TypeError(f"`solver` must be a string, but got {type(solver).__name__}.")
    if solver not in _SOLVERS:
        raise ValueError(f"`solver` must be one of {sorted(_SOLVERS)}, but got {solver!r}.")


def solve_dual_cone(
    gramian: Tensor,
    lower_bounds: Tensor,
    solver: str = DEFAULT_SOLVER,
    *,
    at_bounds: Tensor | None = None,
) -> Tensor:
    r"""Solves :math:`v_i = \arg\min_v v^\top G v` subject to :math:`v \geq u_i`, for each row
    :math:`u_i` of ``lower_bounds``.

    With ``G = J Jᵀ``, ``Jᵀ v_i`` is the projection of ``Jᵀ u_i`` onto the dual cone of the rows
    of ``J`` (the vectors that conflict with none of them). ``gramian`` may be singular (a jitter
    of the order of its rounding noise is then added, see :mod:`._jitter`); a non-finite input
    gives NaN solutions. Raises :class:`DualConeSolverError` (a ``ValueError``) for a matrix far
    from positive semi-definite.

    Args:
        gramian: ``[m, m]`` symmetric positive semi-definite matrix ``G``.
        lower_bounds: ``[k, m]`` matrix whose rows are the lower bounds ``u_i``.
        solver: ``"auto"`` (the default), ``"quadprog"`` or ``"torch"``; the options are
            described once, on the documentation page of UPGrad.
        at_bounds: ``[k]`` booleans, the problems that the caller knows to be solved by their
            bounds (``u_i ≥ 0`` and ``G u_i ≥ 0``, the optimality condition of ``v = u_i``, which
            also holds for ``G + δI``): they get ``u_i`` without a solver, exactly.

    Returns:
        ``[k, m]`` solutions, on ``gramian``'s device and with its dtype.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation._dual_cone import solve_dual_cone
        >>> gramian = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> solve_dual_cone(gramian, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
        tensor([[1.0000, 0.5000]], dtype=torch.float64)
    """
    check_solver(solver)
    if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
        raise ValueError(
            f"`gramian` must be a square matrix of shape [m, m], but got shape "
            f"{list(gramian.shape)}."
        )
    if lower_bounds.dim() != 2 or lower_bounds.shape[1] != gramian.shape[0]:
        raise ValueError(
            f"`lower_bounds` must have shape [k, m] with m = {gramian.shape[0]}, but got shape "
            f"{list(lower_bounds.shape)}."
        )
    # The solvers run many small operations, which skip autograd's bookkeeping in inference mode
    # (about 8 % of a solve at m = 32 to 128 on the CPU); none of them is differentiable. The
    # copy gives back a normal tensor, usable anywhere, e.g. saved by autograd later.
    with torch.inference_mode():
        if (
            at_bounds is None
            or not bool(at_bounds.any())
            or not bool(torch.isfinite(gramian).all())  # NaN answers, from the solvers
        ):
            solutions = _SOLVERS[solver](gramian, lower_bounds)
        else:
            solutions = lower_bounds.to(device=gramian.device, dtype=gramian.dtype)
            rows = (~at_bounds).nonzero().squeeze(1)
            if rows.numel() > 0:
                solutions = solutions.clone()
                solutions[rows] = _SOLVERS[solver](gramian, lower_bounds[rows])
            elif not accepted_by_the_solvers(gramian):  # raise as a solver would have
                raise not_a_gramian("it is not positive definite")
    return solutions.clone()
