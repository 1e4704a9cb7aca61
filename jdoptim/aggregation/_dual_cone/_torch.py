r"""Device-native solver of the dual-cone quadratic program of UPGrad and DualProj.

For every row :math:`u` of ``lower_bounds`` it computes

.. math:: v = \operatorname{argmin}_v \; v^\top G v \quad \text{s.t.} \quad v \ge u,

with torch operations only, so it runs where the Gramian lives (CPU or CUDA) without a copy to
the host, in float64, all ``k`` problems at once. With :math:`v = u + z`, each problem is the
linear complementarity problem :math:`z \ge 0,\ w = G(u + z) \ge 0,\ z^\top w = 0`.

1. **Block principal pivoting** (Júdice & Pires, 1994): split the indices into a free set (where
   :math:`v > u`) and an active set (where :math:`v = u`), solve the equality-constrained problem
   of that split exactly (one batched linear solve for all pending problems), then move *every*
   index whose sign condition fails to the other set. A problem whose number of violations has
   not decreased for three such exchanges is set aside as stalled.
2. **Lawson–Hanson active-set method** for the stalled problems only: one index enters the free
   set per step, and the step towards the free-set optimum stops at the first free coordinate
   that reaches its bound. Slower, but the objective decreases at every step, so it terminates
   on any positive definite Gramian. It starts where the pivoting stalled or, when the pivoting
   was started from the solution of a nearby problem (a polish, see below), from that solution.

The answer is the exact solution of the final split; violations below a rounding tolerance
(``10⁴ ε`` relative to the problem's scale) are ignored, so rounding never makes the pivoting
cycle. The pivoting is capped at ``4m + 20`` steps; reaching the cap (never observed on positive
definite Gramians) emits a ``RuntimeWarning`` and returns the current feasible iterate.

On the CPU the first split is guessed by a few ADMM steps on all problems at once (cheap
``[k, m] × [m, m]`` products with one shared ``(G + ρI)⁻¹``, see :mod:`._guess`), which usually
leaves one or two pivoting steps; each split is solved through the smaller of
``G_FF`` and the active block of ``G⁻¹`` (see :mod:`._torch_blocks`; the largest blocks in
single precision, refined to double precision's accuracy), the problems in chunks
shared by the threads torch may use (see :mod:`._threads`). A singular ``G`` goes
through the jitter ladder of :mod:`._jitter`; this pivoting, started from the free sets of an
answer found on a coarser rung, is also how every solver's answer is polished back to the first.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ._guess import guess_by_admm
from ._jitter import Attempt, Polish, solve_on_ladder
from ._preprocess import finish, prepare
from ._problem import Problem
from ._torch_blocks import CompactSolver, solve_free_masked

#: Number of full exchanges tolerated without a decrease of the violations before a problem is
#: handed to the active-set method (the value recommended by Júdice & Pires).
_FULL_EXCHANGE_BUDGET = 3

#: Violations smaller than this many roundoff units (relative to the scale of the problem) are
#: ignored, so rounding noise never makes the pivoting cycle.
_TOLERANCE_ULPS = 1e4


class DualConeResult:
    """Solution of a batch of dual-cone problems and what the solver did to find it."""

    def __init__(self, solution: Tensor, iterations: int, converged: bool) -> None:
        self.solution = solution
        self.iterations = iterations
        self.converged = converged


def solve_dual_cone_torch(
    gramian: Tensor, lower_bounds: Tensor, *, problem: Problem | None = None
) -> Tensor:
    r"""Solves :math:`\min_v v^\top G v` s.t. :math:`v \ge u` for each row ``u`` of the bounds.

    ``gramian`` ``[m, m]`` is positive semi-definite (UPGrad and DualProj pass the
    trace-normalised Gramian plus ``reg_eps · I``); ``lower_bounds`` is ``[k, m]``. All ``k``
    problems are solved together in float64 on the Gramian's device; the result ``[k, m]`` has
    the Gramian's device and dtype. On CPU the loop checks convergence after every pivoting step;
    on other devices it synchronises with the host only once every four steps. ``problem``: the
    problems already prepared (by the ``"auto"`` policy), which saves preparing them again.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation._dual_cone import solve_dual_cone_torch
        >>> gramian = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> solve_dual_cone_torch(gramian, torch.eye(2, dtype=torch.float64))
        tensor([[1.0000, 0.5000],
                [0.5000, 1.0000]], dtype=torch.float64)
    """
    result = solve_dual_cone_torch_with_info(gramian, lower_bounds, problem=problem)
    if not result.converged:
        warnings.warn(
            f"The torch dual-cone solver stopped at its cap of {result.iterations} pivoting steps "
            "before converging; the Gramian is probably not positive definite.",
            RuntimeWarning,
            stacklevel=2,
        )
    return result.solution


def solve_dual_cone_torch_with_info(
    gramian: Tensor,
    lower_bounds: Tensor,
    *,
    compact: bool | None = None,
    max_iterations: int | None = None,
    problem: Problem | None = None,
) -> DualConeResult:
    """Same as :func:`solve_dual_cone_torch`, also reporting the steps taken and convergence.

    ``compact`` (default: on CPU only) restricts every linear solve to the problems that are
    still pivoting and to their free indices, which needs the sizes on the host (one
    synchronisation per step); without it every step solves all ``k`` masked ``[m, m]`` systems
    and the host is consulted once every four steps.
    """
    prepared = prepare(gramian, lower_bounds) if problem is None else problem
    if isinstance(prepared, Tensor):
        return DualConeResult(finish(prepared, gramian), 0, True)
    m = gramian.shape[0]
    use_compact = gramian.device.type == "cpu" if compact is None else compact
    cap = 4 * m + 20 if max_iterations is None else max_iterations

    def core(g: Tensor, u: Tensor) -> Attempt:
        return Attempt(*_solve(g, u, use_compact, cap))

    attempt = solve_on_ladder(prepared, core, polisher(use_compact, cap))
    return DualConeResult(
        finish(prepared.unscale(attempt.solution), gramian), attempt.iterations, attempt.converged
    )


def polisher(compact: bool, max_iterations: int) -> Polish:
    """The pivoting started from the free sets of given solutions, as the ladder's polish."""

    def polish(g: Tensor, u: Tensor, solution: Tensor) -> Attempt:
        return Attempt(*_solve(g, u, compact, max_iterations, initial=solution))

    return polish


def _solve(
    g: Tensor, u: Tensor, compact: bool, max_iterations: int, initial: Tensor | None = None
) -> tuple[Tensor, int, bool]:
    """Block pivoting for every problem, then the active-set method for those it did not solve.

    ``initial`` (solutions of nearby problems) gives the first free sets instead of the guess.
    """
    v, iterations, stalled = _pivot(g, u, compact, max_iterations, initial)
    if not bool(stalled.any()):
        return v, iterations, True
    rows = stalled.nonzero().squeeze(1)
    # A polish (``initial`` given) starts the active-set method from the nearby problem's
    # solution, not from where the pivoting stalled: on the nearly singular G of a first rung
    # the exchanges wander away from the split they started from, and the active-set method
    # then has many more indices to move (measured on UPGrad's programs of random [m, m/2]
    # Jacobians, reg_eps = 0: 28 instead of 80 steps at [96, 48], 148 instead of 281 at
    # [128, 64], 179 instead of 503 at [384, 192]; 0.2 to 0.4 × the time where the polish
    # stalls, the same elsewhere).
    start = v[rows] if initial is None else initial[rows]
    v_stalled, more_iterations, converged = _active_set(
        g, u[rows], start, compact, max_iterations - iterations
    )
    v[rows] = v_stalled
    return v, iterations + more_iterations, converged


def _pivot(
    g: Tensor, u: Tensor, compact: bool, max_iterations: int, initial: Tensor | None
) -> tuple[Tensor, int, Tensor]:
    """Block principal pivoting on ``z = v - u`` for every row of ``u`` (``max |G| ≈ 1``).

    Returns the solutions, the number of steps and a mask of the problems left unsolved: those
    whose number of violations stopped decreasing (and all pending ones if the cap was hit).
    """
    k, m = u.shape
    device = g.device
    check_every = 1 if compact else 4
    free = torch.zeros_like(u, dtype=torch.bool)
    v = u.clone()  # exact solution of the problem with every index active
    best_count = torch.full((k,), m + 1, device=device, dtype=torch.int64)
    budget = torch.full((k,), _FULL_EXCHANGE_BUDGET, device=device, dtype=torch.int64)
    compact_solver = CompactSolver(g, u) if compact else None
    iterations = 0
    if initial is not None and max_iterations > 0:
        free = initial > u
        if compact_solver is not None:
            v = compact_solver.solve(torch.arange(k, device=device), free)
        else:
            v = solve_free_masked(g, u, free)
        iterations = 1
    elif compact_solver is not None and compact_solver.has_guide and max_iterations > 0:
        # Warm start: guess the free sets with a few ADMM steps (see ._guess), and solve for
        # that guess (one pivoting step).
        v = guess_by_admm(g, u, compact_solver.factor)
        free = v > u
        v = compact_solver.solve(torch.arange(k, device=device), free)
        iterations = 1
    while True:
        violated = _violations(g, u, v, free)
        count = violated.sum(dim=1)
        improved = count < best_count
        best_count = torch.where(improved, count, best_count)
        budget = torch.where(improved, _FULL_EXCHANGE_BUDGET, budget - (~improved).long())
        stalled = (count > 0) & (budget < 0)
        pending = (count > 0) & ~stalled
        if iterations % check_every == 0 and not bool(pending.any()):
            return v, iterations, stalled
        if iterations >= max_iterations:
            return v, iterations, stalled | pending
        iterations += 1
        free = free ^ (violated & pending.unsqueeze(1))
        if compact_solver is not None:
            rows = pending.nonzero().squeeze(1)
            v[rows] = compact_solver.solve(rows, free[rows])
        else:
            v = torch.where(pending.unsqueeze(1), solve_free_masked(g, u, free), v)


def _active_set(
    g: Tensor, u: Tensor, start: Tensor, compact: bool, max_iterations: int
) -> tuple[Tensor, int, bool]:
    """Primal active-set method (Lawson–Hanson) on ``z = v - u ≥ 0``, for every row of ``u``.

    Slower than pivoting (one index enters per step) but monotone: the objective decreases at
    every step, so it terminates on any positive definite G. It starts from the feasible point
    nearest to ``start`` (where the pivoting stalled, or the nearby problem's solution that a
    polish started from: either usually close to the solution), with the coordinates above their
    bounds free: the first step moves towards the optimum of that free set, so the progress
    made before is kept.
    """
    m = u.shape[1]
    check_every = 1 if compact else 4
    z = (start - u).clamp(min=0.0)
    z = torch.where(torch.isfinite(z), z, 0.0)
    free = z > 0.0
    # Whether z is optimal on its free set: not known for the starting point, unless it is u.
    at_optimum = ~free.any(dim=1)
    compact_solver = CompactSolver(g, u) if compact else None
    iterations = 0
    while True:
        v = u + z
        gradient = v @ g
        candidates = ~free & (gradient < -_tolerance(v) * g.diagonal().sqrt())
        entering = at_optimum & candidates.any(dim=1)
        working = entering | ~at_optimum
        if iterations % check_every == 0 and not bool(working.any()):
            return torch.maximum(v, u), iterations, True
        if iterations >= max_iterations:
            return torch.maximum(v, u), iterations, False
        iterations += 1
        steepest = torch.where(candidates, gradient, torch.inf).argmin(dim=1, keepdim=True)
        free = free | (_one_hot(steepest, m) & entering.unsqueeze(1))
        if compact_solver is not None:
            rows = working.nonzero().squeeze(1)
            target = z.clone()
            target[rows] = compact_solver.solve(rows, free[rows]) - u[rows]
        else:
            target = torch.where(working.unsqueeze(1), solve_free_masked(g, u, free) - u, z)
        # Step towards the free-set optimum until the first free coordinate reaches zero.
        blocking = free & (target < 0.0)
        ratios = torch.where(blocking, z / (z - target).clamp(min=1e-300), torch.inf)
        step, first = ratios.min(dim=1, keepdim=True)
        step = step.clamp(max=1.0)
        feasible = ~blocking.any(dim=1)
        z = torch.where(working.unsqueeze(1), (z + step * (target - z)).clamp(min=0.0), z)
        leaving = (free & (z <= 0.0)) | _one_hot(first, m)
        leaving = leaving & (working & ~feasible).unsqueeze(1)
        z = torch.where(leaving, 0.0, z)
        free = free & ~leaving
        at_optimum = torch.where(working, feasible, at_optimum)


def _tolerance(v: Tensor) -> Tensor:
    """Violations below this (per problem) are rounding noise, so they never trigger a step."""
    return _TOLERANCE_ULPS * torch.finfo(v.dtype).eps * v.abs().sum(dim=1, keepdim=True)


def _gradient_violations(g: Tensor, v: Tensor) -> Tensor:
    """Where ``(G v)_i < 0`` beyond rounding: the rounding error of ``(G v)_i`` is at most
    ``ε √G_ii ‖v‖₁`` (``|G_ij| ≤ √(G_ii G_jj) ≤ √G_ii``), so a small diagonal entry (a row
    dominated by ``reg_eps``) gets a small tolerance, and the error in ``v`` stays tiny."""
    return v @ g < -_tolerance(v) * g.diagonal().sqrt()


def _violations(g: Tensor, u: Tensor, v: Tensor, free: Tensor) -> Tensor:
    """Free indices where ``v < u`` and active ones where ``(G v)_i < 0``, beyond rounding."""
    return torch.where(free, v - u < -_tolerance(v), _gradient_violations(g, v))


def _one_hot(indices: Tensor, m: int) -> Tensor:
    mask = torch.zeros(indices.shape[0], m, device=indices.device, dtype=torch.bool)
    return mask.scatter_(1, indices, True)
