"""The quadprog dual-cone solver: one QP per problem, through its dual, in float64 on the CPU.

The dual of ``min ½vᵀGv s.t. v ≥ u`` is ``min ½λᵀG⁻¹λ - uᵀλ s.t. λ ≥ 0`` with ``v = G⁻¹λ``, solved
by quadprog (Goldfarb–Idnani, a dual active-set method). Its effort grows with the constraints
that end up active; in this dual these are the coordinates where ``v > u``, which are few when
the rows conflict little. A problem whose bound is already optimal (``G u ≥ 0``: every
constraint active) is answered without a QP.

The dual needs ``G⁻¹`` accurately: a rung of the jitter ladder (see :mod:`._jitter`) where ``G``
is too ill-conditioned for that (1-norm condition above ``10¹⁰``) is a failure, and the answer
found on a later rung is polished back to the first rung by the torch solver's pivoting.

A numerically singular ``G`` (``reg_eps = 0`` with more objectives than parameters, or a
rank-deficient Jacobian) is instead solved *in its range*, exactly and without any jitter:
with ``G = R Rᵀ`` (``R`` ``[m, r]`` from the eigenvalues above the rounding noise of the input
dtype, ``m ε λ_max``), the problem is the dual of the projection of ``Rᵀu`` onto the cone
``{y : R y ≥ 0}``,

    ``min ½‖y‖² - (Rᵀu)ᵀ y  s.t.  R y ≥ 0``,

an ``r``-dimensional QP with the identity as Hessian (perfectly conditioned), whose multipliers
``λ ≥ 0`` give ``v = u + λ``: then ``v ≥ u`` exactly and ``G v = R y ≥ 0`` up to rounding and the
discarded eigenvalues. quadprog solves it in its primal form. It beats the torch pivoting, which
stalls on such problems, up to a few dozen objectives.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import quadprog
import torch
from numpy.typing import NDArray
from torch import Tensor

from ._jitter import Attempt, noise_level, solve_on_ladder
from ._preprocess import finish, prepare
from ._problem import Problem
from ._torch import polisher

_Array = NDArray[np.float64]

# Above this condition number (1-norm), G⁻¹ loses more than about 6 of float64's 16 digits.
_MAX_CONDITION = 1e10


def solve_with_quadprog(
    gramian: Tensor, lower_bounds: Tensor, *, problem: Problem | None = None
) -> Tensor:
    """Solves the ``k`` problems with quadprog; the result has the Gramian's device and dtype.
    ``problem``: the problems already prepared (by the ``"auto"`` policy)."""
    prepared = prepare(gramian, lower_bounds) if problem is None else problem
    if isinstance(prepared, Tensor):
        return finish(prepared, gramian)
    cpu_problem = dataclasses.replace(
        prepared,
        gramian=prepared.gramian.cpu(),
        lower_bounds=prepared.lower_bounds.cpu(),
        row_scales=prepared.row_scales.cpu(),
    )
    if cpu_problem.first_jitter > 0.0:
        in_range = _solve_in_range(cpu_problem)
        if in_range is not None:
            return finish(cpu_problem.unscale(in_range), gramian)
    m = gramian.shape[0]
    attempt = solve_on_ladder(
        cpu_problem, _attempt, polisher(compact=True, max_iterations=4 * m + 20)
    )
    return finish(cpu_problem.unscale(attempt.solution), gramian)


# Below -_NEGATIVE_NOISE_FACTOR · τ · λ_max, a negative eigenvalue is not rounding noise: the
# matrix is not a Gramian, and the jitter ladder decides (and raises).
_NEGATIVE_NOISE_FACTOR = 4.0


def _solve_in_range(problem: Problem) -> Tensor | None:
    """The exact solutions of a numerically singular problem through its range (see the module
    docstring), or ``None`` where ``G`` is not positive semi-definite within its precision or
    quadprog fails."""
    eigenvalues, eigenvectors = torch.linalg.eigh(problem.gramian)
    largest = float(eigenvalues[-1])
    cut = noise_level(problem.input_dtype, problem.gramian.shape[0]) * max(largest, 1.0)
    if not float(eigenvalues[0]) >= -_NEGATIVE_NOISE_FACTOR * cut:
        return None
    keep = eigenvalues > cut
    factor = (eigenvectors[:, keep] * eigenvalues[keep].sqrt()).numpy()  # R, [m, r]
    g = problem.gramian.numpy()
    u = problem.lower_bounds.numpy()
    solutions: _Array = u.copy()
    constraints = np.ascontiguousarray(factor.T)  # quadprog's C, [r, m]: C^T y = R y ≥ 0
    identity = np.eye(factor.shape[1])
    zeros = np.zeros(factor.shape[0])
    try:
        for row in np.flatnonzero((u @ g < 0.0).any(axis=1)):
            # factorized=True: the Hessian is given by the inverse of its Cholesky factor, I.
            result = quadprog.solve_qp(identity, constraints @ u[row], constraints, zeros, 0, True)
            solutions[row] = u[row] + np.maximum(result[4], 0.0)
    except ValueError:
        return None
    return torch.from_numpy(solutions)


def _attempt(gramian: Tensor, lower_bounds: Tensor) -> Attempt:
    """quadprog on one rung: the solutions, or NaN where ``G`` is too ill-conditioned for it."""
    g = gramian.numpy()
    u = lower_bounds.numpy()
    solutions: _Array = u.copy()
    # v = u is optimal exactly when G u ≥ 0 (KKT with every constraint active): no QP needed.
    unsolved = np.flatnonzero((u @ g < 0.0).any(axis=1))
    if unsolved.size > 0:
        solved = _solve_rows(g, u[unsolved])
        if solved is None:
            return Attempt(torch.full_like(lower_bounds, torch.nan), 0, False)
        solutions[unsolved] = solved
    return Attempt(torch.from_numpy(solutions), 0, True)


def _solve_rows(gramian: _Array, lower_bounds: _Array) -> _Array | None:
    """Solves each row's QP through its dual, or ``None`` if ``G`` cannot be inverted accurately
    or quadprog fails."""
    m = gramian.shape[0]
    identity = np.eye(m)
    zeros = np.zeros(m)
    try:
        inverse_cholesky = np.linalg.inv(np.linalg.cholesky(gramian))
        inverse = inverse_cholesky.T @ inverse_cholesky
        inverse = (inverse + inverse.T) / 2.0
        condition = np.abs(gramian).sum(axis=0).max() * np.abs(inverse).sum(axis=0).max()
        if not condition <= _MAX_CONDITION:
            return None
        # quadprog takes the dual Hessian G⁻¹ = RᵀR factorised, as the upper triangular R⁻¹.
        inverse_factor = np.linalg.inv(np.linalg.cholesky(inverse)).T
        multipliers = np.stack(
            [
                quadprog.solve_qp(inverse_factor, bound, identity, zeros, 0, True)[0]
                for bound in lower_bounds
            ]
        )
    except (np.linalg.LinAlgError, ValueError):
        return None
    solutions: _Array = multipliers @ inverse
    # Rounding in v = G⁻¹λ may leave v a hair below u on the active coordinates.
    return np.maximum(solutions, lower_bounds)
