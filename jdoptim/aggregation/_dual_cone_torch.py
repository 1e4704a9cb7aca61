r"""Device-native solver of the dual-cone quadratic program of UPGrad and DualProj.

For every row :math:`u` of ``lower_bounds`` it computes

.. math:: v = \operatorname{argmin}_v \; v^\top G v \quad \text{s.t.} \quad v \ge u,

with torch operations only, so it runs where the Gramian lives (CPU or CUDA) without a copy
to the host. With :math:`v = u + z`, each problem is the linear complementarity problem
:math:`z \ge 0,\ w = G(u + z) \ge 0,\ z^\top w = 0`, solved for all rows at once by block
principal pivoting (Júdice & Pires, 1994): split the indices into a free set (where
:math:`v > u`) and an active set (where :math:`v = u`), solve the equality-constrained problem
exactly (one batched linear solve), then move every index whose sign condition fails to the other
set. A per-problem safeguard falls back to single exchanges (Murty's rule) when the number of
violations stops decreasing, so the method terminates in finitely many steps on a positive
definite Gramian, with the exact solution of the final split.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

#: Number of full exchanges tolerated without a decrease of the violations before a problem falls
#: back to single exchanges (the value recommended by Júdice & Pires).
_FULL_EXCHANGE_BUDGET = 3

#: Violations smaller than this many roundoff units (relative to the scale of the problem) are
#: ignored, so rounding noise never makes the pivoting cycle.
_TOLERANCE_ULPS = 1e4

# Jitters (relative to max(diag G) = 1) tried in turn when the pivoting fails on a singular G.
_JITTERS = (0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1.0)


class DualConeResult:
    """Solution of a batch of dual-cone problems and what the solver did to find it."""

    def __init__(self, solution: Tensor, iterations: int, converged: bool) -> None:
        self.solution = solution
        self.iterations = iterations
        self.converged = converged


def solve_dual_cone_torch(gramian: Tensor, lower_bounds: Tensor) -> Tensor:
    r"""Solves :math:`\min_v v^\top G v` s.t. :math:`v \ge u` for each row ``u`` of the bounds.

    ``gramian`` ``[m, m]`` must be positive definite (UPGrad and DualProj pass the
    trace-normalised Gramian plus ``reg_eps · I``); ``lower_bounds`` is ``[k, m]``. All ``k``
    problems are solved together in float64 on the Gramian's device; the result ``[k, m]`` has
    the Gramian's device and dtype. On CPU the loop checks convergence after every pivoting step;
    on other devices it synchronises with the host only once every four steps. The pivoting is
    capped at ``4m + 20`` steps; reaching the cap (never observed on positive definite Gramians)
    emits a ``RuntimeWarning`` and returns the current feasible iterate.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation._dual_cone_torch import solve_dual_cone_torch
        >>> gramian = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> solve_dual_cone_torch(gramian, torch.eye(2, dtype=torch.float64))
        tensor([[1.0000, 0.5000],
                [0.5000, 1.0000]], dtype=torch.float64)
    """
    result = solve_dual_cone_torch_with_info(gramian, lower_bounds)
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
) -> DualConeResult:
    """Same as :func:`solve_dual_cone_torch`, also reporting the steps taken and convergence.

    ``compact`` (default: on CPU only) restricts every linear solve to the problems that are
    still pivoting and to their free indices, which needs the sizes on the host (one
    synchronisation per step); without it every step solves all ``k`` masked ``[m, m]`` systems
    and the host is consulted once every four steps.
    """
    m = gramian.shape[0]
    device, out_dtype = gramian.device, gramian.dtype
    if compact is None:
        compact = device.type == "cpu"
    if max_iterations is None:
        max_iterations = 4 * m + 20

    g = gramian.to(torch.float64)
    u = lower_bounds.to(device=device, dtype=torch.float64)
    if u.shape[0] == 0 or m == 0:
        return DualConeResult(u.to(out_dtype), 0, True)

    g = (g + g.mT) / 2.0
    # The minimiser does not change when G is rescaled: work with max(diag G) = 1.
    scale = g.diagonal().amax()
    finite = torch.isfinite(g).all() & torch.isfinite(u).all()
    positive = scale > 0.0
    g = g / torch.where(positive & finite, scale, 1.0)
    identity = torch.eye(m, device=device, dtype=torch.float64)

    total_iterations = 0
    for jitter in _JITTERS:
        jittered = g + jitter * identity if jitter > 0.0 else g
        solution, iterations, converged = _solve(jittered, u, compact, max_iterations)
        total_iterations += iterations
        # One synchronisation: a singular G (zero reg_eps) can make a free-set system singular;
        # a small jitter then gives the limit of the regularised solutions.
        if bool(torch.isfinite(solution).all() | ~finite) and converged:
            break
    # A zero Gramian: the limit of the solutions for G = εI, the feasible point of least norm.
    solution = torch.where(positive, solution, u.clamp(min=0.0))
    solution = torch.where(finite, solution, torch.nan)
    return DualConeResult(solution.to(out_dtype), total_iterations, converged)


def _solve(g: Tensor, u: Tensor, compact: bool, max_iterations: int) -> tuple[Tensor, int, bool]:
    """Block pivoting for every problem, then the active-set method for those it did not solve."""
    v, iterations, stalled = _pivot(g, u, compact, max_iterations)
    if not bool(stalled.any()):
        return v, iterations, True
    rows = stalled.nonzero().squeeze(1)
    v_stalled, more_iterations, converged = _active_set(
        g, u[rows], compact, max_iterations - iterations
    )
    v[rows] = v_stalled
    return v, iterations + more_iterations, converged


def _pivot(g: Tensor, u: Tensor, compact: bool, max_iterations: int) -> tuple[Tensor, int, Tensor]:
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
    compact_solver = _CompactSolver(g, u) if compact else None
    iterations = 0
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
            v = torch.where(pending.unsqueeze(1), _solve_free_masked(g, u, free), v)


def _active_set(
    g: Tensor, u: Tensor, compact: bool, max_iterations: int
) -> tuple[Tensor, int, bool]:
    """Primal active-set method (Lawson–Hanson) on ``z = v - u ≥ 0``, for every row of ``u``.

    Slower than pivoting (one index enters per step) but monotone: the objective decreases at
    every step, so it terminates on any positive definite G.
    """
    k, m = u.shape
    check_every = 1 if compact else 4
    z = torch.zeros_like(u)
    free = torch.zeros_like(u, dtype=torch.bool)
    at_optimum = torch.ones(k, device=u.device, dtype=torch.bool)  # z is optimal on its free set
    compact_solver = _CompactSolver(g, u) if compact else None
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
            target = torch.where(working.unsqueeze(1), _solve_free_masked(g, u, free) - u, z)
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


def _solve_free_masked(g: Tensor, u: Tensor, free: Tensor) -> Tensor:
    """Minimises vᵀGv with v = u on the active indices, for all problems at full size [m, m]."""
    m = g.shape[0]
    fixed = torch.where(free, 0.0, u)
    both_free = free.unsqueeze(2) & free.unsqueeze(1)
    eye = torch.eye(m, device=g.device, dtype=torch.bool)
    system = torch.where(both_free, g, eye.to(g.dtype))
    rhs = torch.where(free, -(fixed @ g), 0.0)
    free_values, _ = torch.linalg.solve_ex(system, rhs)
    return torch.where(free, free_values, u)


class _CompactSolver:
    """Solves the free-set systems of the pending problems, reusing one factorisation.

    The first call factorises ``G_FF`` of every pending problem (padded to the largest free set
    ``F``). Later calls only see a few indices enter or leave ``F``: they reuse those factors
    and solve a small bordered system (Schur complement) for the changed indices, until the
    changes grow large enough that a new factorisation is cheaper.

    Submatrices are read from ``diag(G, I, I)`` so that padding costs no extra pass: a padding
    slot ``p`` reads index ``m + p`` (a one on the diagonal) or ``2m + p`` (zeros).
    """

    def __init__(self, gramian: Tensor, lower_bounds: Tensor) -> None:
        m = gramian.shape[0]
        self.m = m
        self.gramian = gramian
        self.extended = torch.eye(3 * m, device=gramian.device, dtype=gramian.dtype)
        self.extended[:m, :m] = gramian
        self.slots = torch.arange(m, device=gramian.device)
        self.lower_bounds = lower_bounds
        k = lower_bounds.shape[0]
        self.position = torch.full((k,), -1, dtype=torch.int64, device=gramian.device)
        self.base_free = self.base_order = self.base_rows = self.base_valid = torch.empty(0)
        self.base_lu = self.base_pivots = torch.empty(0)
        self.base_size = 0

    def solve(self, rows: Tensor, free: Tensor) -> Tensor:
        """Returns the solutions ``[len(rows), m]`` for the free sets ``free`` of ``rows``."""
        fixed = torch.where(free, 0.0, self.lower_bounds[rows])
        residual = -(fixed @ self.gramian)  # right-hand side of G_FF v_F = -G_FA u_A
        position = self.position[rows]
        if bool((position < 0).any()):
            return self._factorize(rows, free, fixed, residual)
        base_free = self.base_free[position]
        added = free & ~base_free
        removed = base_free & ~free
        changed = added | removed
        changed_size = int(changed.sum(dim=1).max())
        if changed_size > max(8, self.base_size // 3):
            return self._factorize(rows, free, fixed, residual)
        return self._update(position, free, fixed, residual, added, removed, changed)

    def _factorize(self, rows: Tensor, free: Tensor, fixed: Tensor, residual: Tensor) -> Tensor:
        order, valid = _leading_indices(free)
        size = order.shape[1]
        base_rows = torch.where(valid, order, self.m + self.slots[:size])
        system = self.extended[base_rows.unsqueeze(2), base_rows.unsqueeze(1)]
        lu, pivots, _ = torch.linalg.lu_factor_ex(system)
        rhs = torch.where(valid, residual.gather(1, order), 0.0)
        values = torch.linalg.lu_solve(lu, pivots, rhs.unsqueeze(2)).squeeze(2)
        self.position.fill_(-1)
        self.position[rows] = torch.arange(rows.shape[0], device=rows.device)
        self.base_free, self.base_order, self.base_rows, self.base_valid = (
            free,
            order,
            base_rows,
            valid,
        )
        self.base_lu, self.base_pivots, self.base_size = lu, pivots, size
        return _assemble(fixed, order, valid, values)

    def _update(
        self,
        position: Tensor,
        free: Tensor,
        fixed: Tensor,
        residual: Tensor,
        added: Tensor,
        removed: Tensor,
        changed: Tensor,
    ) -> Tensor:
        order, base_rows = self.base_order[position], self.base_rows[position]
        valid = self.base_valid[position]
        lu, pivots = self.base_lu[position], self.base_pivots[position]
        # Changed indices first: added ones become unknowns, removed ones get the constraint
        # v_j = u_j through a Lagrange multiplier (a bordered system around the old factors).
        indices, changed_valid = _leading_indices(changed)
        slots = self.slots[: indices.shape[1]]
        is_added = added.gather(1, indices) & changed_valid
        is_removed = removed.gather(1, indices) & changed_valid
        # Border columns of removed and padding slots read zeros; the corner has a zero diagonal
        # for removed slots (multipliers) and a one for padding slots.
        border_columns = torch.where(is_added, indices, 2 * self.m + slots)
        border = self.extended[base_rows.unsqueeze(2), border_columns.unsqueeze(1)]
        multiplier = (order.unsqueeze(2) == indices.unsqueeze(1)) & is_removed.unsqueeze(1)
        border = torch.where(multiplier, 1.0, border)
        corner_rows = torch.where(is_added, indices, self.m + slots)
        corner_columns = torch.where(is_removed, 2 * self.m + slots, corner_rows)
        corner = self.extended[corner_rows.unsqueeze(2), corner_columns.unsqueeze(1)]
        base_rhs = torch.where(valid, residual.gather(1, order), 0.0)
        solved = torch.linalg.lu_solve(lu, pivots, torch.cat([base_rhs.unsqueeze(2), border], 2))
        base_values, border_solved = solved[:, :, 0], solved[:, :, 1:]
        border_t = border.mT
        schur = corner - border_t @ border_solved
        changed_rhs = torch.where(is_added, residual.gather(1, indices), 0.0)
        changed_rhs = changed_rhs - (border_t @ base_values.unsqueeze(2)).squeeze(2)
        changed_values, _ = torch.linalg.solve_ex(schur, changed_rhs)
        base_values = base_values - (border_solved @ changed_values.unsqueeze(2)).squeeze(2)
        solution = _assemble(fixed, order, valid & free.gather(1, order), base_values)
        return _assemble(solution, indices, is_added, changed_values)


def _leading_indices(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the indices where ``mask`` holds first (then the others), cut to the largest
    count of the batch, and which of those positions are really in ``mask``."""
    counts = mask.sum(dim=1)
    size = int(counts.max())
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :size]
    valid = torch.arange(size, device=mask.device) < counts.unsqueeze(1)
    return order, valid


def _assemble(base: Tensor, indices: Tensor, valid: Tensor, values: Tensor) -> Tensor:
    """``base`` with ``values`` written at ``indices`` where ``valid``."""
    return base.scatter(1, indices, torch.where(valid, values, base.gather(1, indices)))
