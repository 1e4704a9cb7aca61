"""The one exception every dual-cone solver raises when it cannot solve a problem."""

from __future__ import annotations


class DualConeSolverError(ValueError):
    """No jitter of the ladder made the problem solvable: the matrix is not a Gramian.

    A :class:`ValueError` because it can only come from a bad matrix: a positive semi-definite
    one (a Gramian, even singular or with rounding noise) is always solved.
    """


def not_a_gramian(detail: str) -> DualConeSolverError:
    """The error of a solver that failed on every rung of the jitter ladder, with its reason."""
    return DualConeSolverError(
        "`gramian` must be positive semi-definite, but the dual-cone solver failed on it even "
        f"with a jitter of max(diag(gramian)) · I: {detail}"
    )
