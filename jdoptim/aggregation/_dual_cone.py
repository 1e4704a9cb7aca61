"""Projection onto the dual cone of the rows of a Jacobian, as a small QP on its Gramian.

The projection of ``Jᵀu`` onto the dual cone ``{x : J x ≥ 0}`` of the rows of ``J`` is ``Jᵀv`` with
``v = argmin_v vᵀ G v  s.t.  v ≥ u`` and ``G = J Jᵀ``. UPGrad and DualProj reduce to this problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import quadprog
import torch
from numpy.typing import NDArray
from torch import Tensor

from ._dual_cone_torch import solve_dual_cone_torch

#: A dual-cone solver: ``(gramian [m, m], lower_bounds [k, m]) -> solutions [k, m]``.
DualConeSolver = Callable[[Tensor, Tensor], Tensor]

_Array = NDArray[np.float64]

# Jitters added to G (scaled to max(diag G) = 1) when it is too ill-conditioned to be inverted
# accurately; the last one always succeeds, G + I being well conditioned. UPGrad and DualProj's
# regularised Gramians (condition ≲ m / reg_eps) never need one.
_JITTERS = (0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1.0)
# Above this condition number (1-norm), G⁻¹ loses more than about 6 of float64's 16 digits.
_MAX_CONDITION = 1e10


def _solve_with_quadprog(gramian: Tensor, lower_bounds: Tensor) -> Tensor:
    """Solves the ``k`` QPs with quadprog (Goldfarb–Idnani) in float64 on the CPU."""
    gram = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    bounds = lower_bounds.detach().to(device="cpu", dtype=torch.float64).numpy()
    solutions = _solve_numpy(gram, bounds)
    return torch.from_numpy(solutions).to(device=gramian.device, dtype=gramian.dtype)


def _solve_numpy(gramian: _Array, lower_bounds: _Array) -> _Array:
    k, m = lower_bounds.shape
    if k == 0 or m == 0:
        return np.zeros((k, m))
    if not (np.isfinite(gramian).all() and np.isfinite(lower_bounds).all()):
        # A non-finite problem has no meaningful solution; NaN makes the caller's output
        # non-finite (so that, e.g., GradScaler skips the step) instead of hanging quadprog.
        return np.full((k, m), np.nan)
    gramian = (gramian + gramian.T) / 2.0
    # The minimiser is invariant to a positive rescaling of G: work with max(diag G) = 1.
    scale = float(np.max(np.diag(gramian)))
    if not scale > 0.0:
        # G ≤ 0 on the diagonal means G = 0 for a PSD matrix: every feasible v is optimal; take
        # the limit of the solutions for G = εI, the feasible point of smallest norm.
        return np.maximum(lower_bounds, 0.0)
    gramian = gramian / scale

    solutions: _Array = lower_bounds.copy()
    # v = u is optimal exactly when G u ≥ 0 (KKT with every constraint active): no QP needed.
    unsolved = np.flatnonzero((lower_bounds @ gramian < 0.0).any(axis=1))
    if unsolved.size > 0:
        solutions[unsolved] = _solve_rows(gramian, lower_bounds[unsolved])
    return solutions


def _solve_rows(gramian: _Array, lower_bounds: _Array) -> _Array:
    """Solves each row's QP through its dual, retrying with a growing jitter if quadprog fails.

    The dual of ``min ½vᵀGv s.t. v ≥ u`` is ``min ½λᵀG⁻¹λ - uᵀλ s.t. λ ≥ 0`` with ``v = G⁻¹λ``.
    quadprog's effort grows with the number of constraints that end up active; in the dual these
    are the coordinates where ``v > u``, which are few when the rows conflict little.
    """
    m = gramian.shape[0]
    identity = np.eye(m)
    zeros = np.zeros(m)
    last_error: ValueError | None = None
    for jitter in _JITTERS:
        jittered = gramian + jitter * identity
        try:
            inverse_cholesky = np.linalg.inv(np.linalg.cholesky(jittered))
            inverse = inverse_cholesky.T @ inverse_cholesky
            inverse = (inverse + inverse.T) / 2.0
            condition = np.abs(jittered).sum(axis=0).max() * np.abs(inverse).sum(axis=0).max()
            if jitter < _JITTERS[-1] and not condition <= _MAX_CONDITION:
                continue
            # quadprog takes the dual Hessian G⁻¹ = RᵀR factorised, as the upper triangular R⁻¹.
            inverse_factor = np.linalg.inv(np.linalg.cholesky(inverse)).T
            multipliers = np.stack(
                [
                    quadprog.solve_qp(inverse_factor, bound, identity, zeros, 0, True)[0]
                    for bound in lower_bounds
                ]
            )
        except (np.linalg.LinAlgError, ValueError) as error:
            last_error = ValueError(str(error))
            continue
        solutions: _Array = multipliers @ inverse
        # Rounding in v = G⁻¹λ may leave v a hair below u on the active coordinates.
        return np.maximum(solutions, lower_bounds)
    # Only reachable when G has an eigenvalue below -max(diag G): not a Gramian.
    raise ValueError(
        "`gramian` must be positive semi-definite, but quadprog failed on it even with a jitter "
        f"of max(diag(gramian)) · I: {last_error}"
    )


# Largest ratio G00 G11 / det G for which the closed form of two objectives is used; above it (a
# nearly singular G, reachable only with reg_eps = 0) the problem goes to quadprog and its jitter.
_CLOSED_FORM_MAX_CONDITION = 1e10


def _solve_closed_form(gramian: Tensor, lower_bounds: Tensor) -> Tensor | None:
    """Exact solutions for ``m <= 2`` on the CPU in float64 arithmetic, or ``None`` (then the
    caller uses quadprog) for a non-finite or nearly singular ``G``.

    With ``v_A = u_A`` on an active set ``A``, the free coordinates minimise ``vᵀGv`` in closed
    form (``v_i = -G_ij u_j / G_ii`` for one free index ``i``, ``v = 0`` for two). The minimiser
    over ``v ≥ u`` is one of these face minimisers, and every feasible one is a feasible point:
    the feasible one with the least objective is the solution. Four candidates per problem, no
    iteration and no numpy round trip.
    """
    m = gramian.shape[0]
    g: list[list[float]] = gramian.detach().to(device="cpu", dtype=torch.float64).tolist()
    bounds: list[list[float]] = lower_bounds.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(x) for row in g + bounds for x in row):
        return None
    solutions: list[list[float]] = []
    if m == 1:
        if not g[0][0] > 0.0:
            return None
        solutions = [[max(u[0], 0.0)] for u in bounds]
    else:
        a, b, c = g[0][0], (g[0][1] + g[1][0]) / 2.0, g[1][1]
        if not (a > 0.0 and c > 0.0 and a * c - b * b > a * c / _CLOSED_FORM_MAX_CONDITION):
            return None

        def objective(v: tuple[float, float]) -> float:
            return a * v[0] ** 2 + 2.0 * b * v[0] * v[1] + c * v[1] ** 2

        for u0, u1 in bounds:
            candidates = [(u0, u1), (-b * u1 / a, u1), (u0, -b * u0 / c), (0.0, 0.0)]
            feasible: list[tuple[float, float]] = [
                (v0, v1) for v0, v1 in candidates if v0 >= u0 and v1 >= u1
            ]
            best = min(feasible, key=objective)
            solutions.append([best[0], best[1]])
    return torch.tensor(solutions, dtype=gramian.dtype).reshape(lower_bounds.shape)


# On the CPU, quadprog's per-problem solves beat the batched torch solver's fixed cost up to about
# this many objectives (measured on a 2-core CPU, one thread, UPGradWeighting on the Gramians of
# random [m, 1000] Jacobians: 0.29 vs 0.83 ms at m = 8, 0.94 vs 0.95 ms at m = 24, 1.9 vs 1.0 ms
# at m = 32).
_AUTO_QUADPROG_MAX_M = 24


def _solve_auto(gramian: Tensor, lower_bounds: Tensor) -> Tensor:
    """On the CPU: closed forms for one or two objectives, quadprog up to
    ``_AUTO_QUADPROG_MAX_M``; the batched torch solver everywhere else."""
    if gramian.device.type == "cpu" and gramian.shape[0] <= _AUTO_QUADPROG_MAX_M:
        if 1 <= gramian.shape[0] <= 2 and lower_bounds.shape[0] > 0:
            solutions = _solve_closed_form(gramian, lower_bounds)
            if solutions is not None:
                return solutions
        return _solve_with_quadprog(gramian, lower_bounds)
    return solve_dual_cone_torch(gramian, lower_bounds)


_SOLVERS: dict[str, DualConeSolver] = {
    "auto": _solve_auto,
    "quadprog": _solve_with_quadprog,
    "torch": solve_dual_cone_torch,
}


def check_solver(solver: str) -> None:
    """Raises unless ``solver`` names a registered dual-cone solver."""
    if not isinstance(solver, str):
        raise TypeError(f"`solver` must be a string, but got {type(solver).__name__}.")
    if solver not in _SOLVERS:
        raise ValueError(f"`solver` must be one of {sorted(_SOLVERS)}, but got {solver!r}.")


def solve_dual_cone(gramian: Tensor, lower_bounds: Tensor, solver: str = "quadprog") -> Tensor:
    r"""Solves :math:`v_i = \arg\min_v v^\top G v` subject to :math:`v \geq u_i`, for each row
    :math:`u_i` of ``lower_bounds``.

    With ``G = J Jᵀ``, ``Jᵀ v_i`` is the projection of ``Jᵀ u_i`` onto the dual cone of the rows
    of ``J`` (the vectors that conflict with none of them). ``gramian`` is expected to be
    positive definite (normalised and regularised by the caller); a singular one is jittered.
    A non-finite input gives NaN solutions.

    Args:
        gramian: ``[m, m]`` symmetric positive (semi-)definite matrix ``G``.
        lower_bounds: ``[k, m]`` matrix whose rows are the lower bounds ``u_i``.
        solver: ``"quadprog"`` (float64 on the CPU, one QP per row), ``"torch"`` (all rows at
            once by block principal pivoting, in float64 on the Gramian's device, no host copy),
            or ``"auto"`` (on the CPU: exact closed forms for ``m <= 2``, quadprog for
            ``m <= 24``, where they are faster; torch otherwise).

    Returns:
        ``[k, m]`` solutions, on ``gramian``'s device and with its dtype.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation._dual_cone import solve_dual_cone
        >>> gramian = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> solve_dual_cone(gramian, torch.tensor([[1.0, 0.0]], dtype=torch.float64), "quadprog")
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
    return _SOLVERS[solver](gramian, lower_bounds)
