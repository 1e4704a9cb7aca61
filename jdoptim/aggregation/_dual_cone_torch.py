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

On the CPU the first split is guessed by a few accelerated projected-gradient steps (cheap
``[k, m] × [m, m]`` products), which usually leaves a single pivoting step, and each split is solved
through the smaller of ``G_FF`` and the active block of ``G⁻¹`` (computed once for all problems).
"""

from __future__ import annotations

import threading
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

#: Largest entry of ``K G - I`` for which the inverse ``K`` of the Gramian is used to solve the
#: free-set systems through their active blocks (one refinement step then recovers full accuracy).
_INVERSE_ACCURACY = 1e-8

#: Estimated relative error of a solve through the inverse above which a refinement step follows.
_REFINEMENT_THRESHOLD = 1e-10

#: Squarings of G (G², G⁴, …, G^(2^k)) estimating its largest eigenvalue, as 2^k power iterations
#: would, in k matrix products; then at most _PROJECTED_GRADIENT_STEPS accelerated
#: projected-gradient steps guess the free sets before the pivoting, stopping when the guess has
#: not changed over the last _PATTERN_CHECK_EVERY steps.
_SQUARINGS = 5
_PROJECTED_GRADIENT_STEPS = 32
_PATTERN_CHECK_EVERY = 4

#: Entries of the systems factorised together in one batched call (32 systems of 64 × 64).
_CHUNK_ENTRIES = 32 * 64 * 64

# Workspaces of the CPU solver, per thread, kept from one call to the next: fresh ones at every
# call are big enough for the allocator to map new pages each time, and those page faults cost
# more than the factorisations at m = 64. Only those up to _MAX_CACHED_BYTES are kept (the
# chunked systems take at most 1 MiB each; the stacked matrices reach it at m = 128).
_WORKSPACES = threading.local()
_MAX_CACHED_BYTES = 1 << 20


def _workspace(name: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A flat tensor of ``numel`` entries for ``name``, reused by every call on this thread
    (a fresh one when it would exceed ``_MAX_CACHED_BYTES``)."""
    if numel * dtype.itemsize > _MAX_CACHED_BYTES:
        return torch.empty(numel, device=device, dtype=dtype)
    buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] | None = getattr(
        _WORKSPACES, "buffers", None
    )
    if buffers is None:
        buffers = {}
        _WORKSPACES.buffers = buffers
    key = (name, dtype, device)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        # A normal tensor even under inference_mode, so that later calls outside it may write.
        with torch.inference_mode(False):
            buffer = torch.empty(numel, device=device, dtype=dtype)
        buffers[key] = buffer
    return buffer[:numel]


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

    # The solver is not differentiable (UPGrad and DualProj say so on backpropagation).
    g = gramian.detach().to(torch.float64)
    u = lower_bounds.detach().to(device=device, dtype=torch.float64)
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
    if compact_solver is not None and compact_solver.has_inverse and max_iterations > 0:
        # Warm start: guess the free sets with a few projected-gradient steps from the solutions
        # with only the positive bounds active, and solve for that guess (one pivoting step).
        v = _projected_gradient(g, u, compact_solver.warm_start())
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
            v = torch.where(pending.unsqueeze(1), _solve_free_masked(g, u, free), v)


def _projected_gradient(g: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """A few accelerated projected-gradient steps (FISTA) from ``v`` towards the solutions.

    Only a guess of the free sets for the pivoting, which makes them exact: on a well
    conditioned G these steps usually find every free set, so a single pivoting step remains.
    """
    m = g.shape[0]
    # Single precision is enough for a guess, and twice as fast.
    exact_bounds = u
    g, u, v = g.float(), u.float(), v.float()
    # Step 1 / L with L a little above the largest eigenvalue of G: the Rayleigh quotient of
    # G^32 x, 32 power iterations in 5 products (each power rescaled to keep float32 in range).
    power = g
    for _ in range(_SQUARINGS):
        power = power @ power
        power = power / power.abs().amax().clamp(min=1e-30)
    vector = power @ torch.linspace(1.0, 2.0, m, device=g.device, dtype=g.dtype)
    vector = vector / vector.norm().clamp(min=1e-30)
    step = 1.0 / max(1.1 * float(vector @ g @ vector), 1e-30)
    v = torch.maximum(v, u)
    momentum_point = v
    t = 1.0
    free = v > u
    for iteration in range(1, _PROJECTED_GRADIENT_STEPS + 1):
        next_v = torch.addmm(momentum_point, momentum_point, g, alpha=-step).clamp_(min=u)
        next_t = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        # next_v + (t - 1) / next_t · (next_v - v)
        momentum_point = torch.lerp(v, next_v, 1.0 + (t - 1.0) / next_t)
        v, t = next_v, next_t
        if iteration % _PATTERN_CHECK_EVERY == 0:
            # Stop once the guessed free sets stop changing (one synchronisation).
            next_free = v > u
            if bool((next_free == free).all()):
                break
            free = next_free
    return torch.where(torch.isfinite(v) & (v > u), v.to(exact_bounds.dtype), exact_bounds)


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
    """Solves the free-set systems of the pending problems, each through its smaller block.

    The problem with active set ``A`` (``v_A = u_A``) and free set ``F`` has the solution
    ``v_F = -G_FF⁻¹ G_FA u_A``, or equivalently ``v = K_{:A} K_AA⁻¹ u_A`` with ``K = G⁻¹`` (the
    multipliers ``K_AA⁻¹ u_A`` are ``(G v)_A``). All problems share ``G``, so ``K`` is computed
    once, and each problem factorises the smaller of ``G_FF`` and ``K_AA`` (at most ``m / 2``).
    ``K`` is used only when ``‖K G − I‖`` shows it accurate (not on a nearly singular ``G``), and
    a step of iterative refinement with the exact ``G`` follows where the estimated error of the
    solve through ``K`` could show.

    Blocks are read from ``diag(G, I)`` or ``diag(K, I)`` so that padding costs no extra pass: a
    padding slot ``p`` reads index ``m + p`` (a one on the diagonal). Those matrices live in this
    thread's workspace: an instance is used only until the next one is made on the same thread.
    """

    def __init__(self, gramian: Tensor, lower_bounds: Tensor) -> None:
        m = gramian.shape[0]
        self.m = m
        self.gramian = gramian
        self.lower_bounds = lower_bounds
        self.slots = torch.arange(m, device=gramian.device)
        # diag(G, I) and diag(K, I), one after the other in one flat tensor: every block of every
        # problem is read from there.
        stacked = _workspace("stacked", 8 * m * m, gramian.dtype, gramian.device)
        stacked = stacked.view(2, 2 * m, 2 * m).zero_()
        stacked.diagonal(dim1=1, dim2=2).fill_(1.0)
        stacked[0, :m, :m] = gramian
        identity = torch.eye(m, device=gramian.device, dtype=gramian.dtype)
        factor, info = torch.linalg.cholesky_ex(gramian)
        self.has_inverse = bool(info == 0)
        self.refine = True
        inverse = identity  # a placeholder where G is not positive definite
        if self.has_inverse:
            inverse = torch.cholesky_inverse(factor)
            inverse = (inverse + inverse.mT) / 2.0
            error = (inverse @ gramian - identity).abs().amax()
            self.has_inverse = bool(error <= _INVERSE_ACCURACY)
            # Relative error of a solve through K: about cond(G) · (error + ε), where
            # cond(G) ≤ m · max|G| · max|K|; refine only when that may be visible.
            condition = m * gramian.abs().amax() * inverse.abs().amax()
            epsilon = torch.finfo(gramian.dtype).eps
            self.refine = bool(condition * (error + epsilon) > _REFINEMENT_THRESHOLD)
        self.inverse = inverse
        stacked[1, :m, :m] = inverse
        self.stacked = stacked.reshape(-1)

    def _factorize(self, offsets: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Cholesky factors of the blocks ``M_b[rows_b][:, rows_b]`` for every row ``rows_b`` of
        ``rows``, where ``M_b`` is ``diag(G, I)`` or ``diag(K, I)`` as ``offsets`` (``0`` or
        ``(2m)²``) say, and whether each factorisation succeeded."""
        count, size = rows.shape
        numel = count * size * size
        flat_indices = _workspace("indices", numel, torch.int64, rows.device)
        flat_indices = flat_indices.view(count, size, size)
        torch.add(rows.unsqueeze(2) * (2 * self.m), rows.unsqueeze(1), out=flat_indices)
        flat_indices += offsets
        system = _workspace("system", numel, self.stacked.dtype, rows.device)
        torch.index_select(self.stacked, 0, flat_indices.reshape(-1), out=system)
        # Batched column-major storage, the layout LAPACK writes in place.
        factor = _workspace("factor", numel, self.stacked.dtype, rows.device)
        factor = factor.view(count, size, size).mT
        info = torch.empty(count, device=rows.device, dtype=torch.int32)
        torch.linalg.cholesky_ex(system.view(count, size, size), out=(factor, info))
        return factor, info == 0

    def warm_start(self) -> Tensor:
        """The solutions with only the positive bounds active, a guess of the true ones.

        With a single positive bound ``u_i`` per problem (UPGrad), this is ``u_i K_{:i} / K_ii``.
        """
        u = self.lower_bounds
        positive = u > 0.0
        if bool((positive.sum(dim=1) <= 1).all()):
            index = u.argmax(dim=1, keepdim=True)
            value = u.gather(1, index).clamp(min=0.0)
            return value / self.inverse.diagonal()[index] * self.inverse[index.squeeze(1)]
        return self.solve(torch.arange(u.shape[0], device=u.device), ~positive)

    def solve(self, rows: Tensor, free: Tensor) -> Tensor:
        """Returns the solutions ``[len(rows), m]`` for the free sets ``free`` of ``rows``.

        Each problem factorises one block: ``G_FF`` or, when the active set is the smaller one
        (and ``K`` is accurate), ``K_AA``. The blocks of all problems are read from one stacked
        ``[diag(G, I), diag(K, I)]`` and factorised together, in chunks of similar sizes only
        when they would not fit in one workspace.
        """
        lower_bounds = self.lower_bounds[rows]
        free_count = free.sum(dim=1)
        through_active = (2 * free_count > self.m) & self.has_inverse
        block = torch.where(through_active.unsqueeze(1), ~free, free)
        sizes = torch.where(through_active, self.m - free_count, free_count)
        size = max(1, int(sizes.max()))
        per_chunk = max(1, _CHUNK_ENTRIES // (size * size))
        if rows.shape[0] <= per_chunk:
            return self._solve_blocks(lower_bounds, free, block, through_active)
        solution = torch.empty_like(lower_bounds)
        # Problems of similar sizes together: less padding in each chunk.
        by_size = sizes.argsort()
        for chunk in torch.split(by_size, per_chunk):
            solution[chunk] = self._solve_blocks(
                lower_bounds[chunk], free[chunk], block[chunk], through_active[chunk]
            )
        return solution

    def _solve_blocks(
        self, lower_bounds: Tensor, free: Tensor, block: Tensor, through_active: Tensor
    ) -> Tensor:
        """Solves each problem through its ``block``: ``G_FF`` where ``through_active`` is false
        (``G_FF v_F = -G_FA u_A``), else ``K_AA`` (``v = K_{:A} K_AA⁻¹ u_A``)."""
        m = self.m
        order, valid = _leading_indices(block)
        padded = torch.where(valid, order, m + self.slots[: order.shape[1]])
        offsets = torch.where(through_active, (2 * m) ** 2, 0).view(-1, 1, 1)
        factor, success = self._factorize(offsets, padded)
        fixed = torch.where(free, 0.0, lower_bounds)
        # Right-hand sides: -(G u_A)_F through G_FF, u_A through K_AA.
        residual = torch.where(through_active.unsqueeze(1), lower_bounds, -(fixed @ self.gramian))
        rhs = torch.where(valid, residual.gather(1, order), 0.0)
        values = torch.cholesky_solve(rhs.unsqueeze(2), factor).squeeze(2)
        # On the G_FF path the values are v_F; on the K_AA path the multipliers of v = K_{:A} λ_A.
        on_block = _assemble(torch.zeros_like(lower_bounds), order, valid, values)
        solution = torch.where(
            through_active.unsqueeze(1),
            torch.where(free, on_block @ self.inverse, lower_bounds),
            torch.where(free, on_block, lower_bounds),
        )
        if self.refine and bool(through_active.any()):
            # Refinement of the K_AA path: v_F -= G_FF⁻¹ r_F with r_F = (G v)_F and
            # G_FF⁻¹ = K_FF - K_FA K_AA⁻¹ K_AF.
            correction_rows = through_active.unsqueeze(1) & free
            residual = torch.where(correction_rows, solution @ self.gramian, 0.0)
            spread = residual @ self.inverse
            rhs = torch.where(valid, spread.gather(1, order), 0.0)
            multipliers = torch.cholesky_solve(rhs.unsqueeze(2), factor).squeeze(2)
            back = _assemble(torch.zeros_like(lower_bounds), order, valid, multipliers)
            correction = spread - back @ self.inverse
            solution = torch.where(correction_rows, solution - correction, solution)
        # A singular block (G itself singular): NaN makes the caller jitter G.
        return torch.where(success.unsqueeze(1), solution, torch.nan)


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
