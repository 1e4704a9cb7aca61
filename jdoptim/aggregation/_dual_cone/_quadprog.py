"""The quadprog dual-cone solver: one QP per problem, through its dual, in float64 on the CPU.

The dual of ``min ½vᵀGv s.t. v ≥ u`` is ``min ½λᵀG⁻¹λ - uᵀλ s.t. λ ≥ 0`` with ``v = G⁻¹λ``, solved
by quadprog (Goldfarb–Idnani, a dual active-set method). Its effort grows with the constraints
that end up active; in this dual these are the coordinates where ``v > u``, which are few when
the rows conflict little. A problem whose bound is already optimal (``G u ≥ 0``: every
constraint active) is answered without a QP.

The dual needs ``G⁻¹`` accurately: a rung of the jitter ladder (see :mod:`._jitter`) where ``G``
is too ill-conditioned for that (1-norm condition above ``10¹⁰``) is a failure, and the answer
found on a later rung is polished back to the first rung by the torch solver's pivoting.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import quadprog
import torch
from numpy.typing import NDArray
from torch import Tensor

from ._jitter import Attempt, solve_on_ladder
from ._preprocess import finish, prepare
from ._torch import polisher

_Array = NDArray[np.float64]

# Above this condition number (1-norm), G⁻¹ loses more than about 6 of float64's 16 digits.
_MAX_CONDITION = 1e10


def solve_with_quadprog(gramian: Tensor, lower_bounds: Tensor) -> Tensor:
    """Solves the ``k`` problems with quadprog; the result has the Gramian's device and dtype."""
    problem = prepare(gramian, lower_bounds)
    if isinstance(problem, Tensor):
        return finish(problem, gramian)
    cpu_problem = dataclasses.replace(
        problem,
        gramian=problem.gramian.cpu(),
        lower_bounds=problem.lower_bounds.cpu(),
        row_scales=problem.row_scales.cpu(),
    )
    m = gramian.shape[0]
    attempt = solve_on_ladder(
        cpu_problem, _attempt, polisher(compact=True, max_iterations=4 * m + 20)
    )
    return finish(cpu_problem.unscale(attempt.solution), gramian)


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
