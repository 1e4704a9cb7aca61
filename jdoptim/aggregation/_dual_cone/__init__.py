r"""Projection onto the dual cone of the rows of a Jacobian, as a small QP on its Gramian.

The projection of ``Jᵀu`` onto the dual cone ``{x : J x ≥ 0}`` of the rows of ``J`` is ``Jᵀv``
with ``v = argmin_v vᵀ G v  s.t.  v ≥ u`` and ``G = J Jᵀ``. UPGrad and DualProj reduce to this
problem, ``k`` times on one Gramian. Every solver goes through the same steps:

1. :mod:`._preprocess`: float64, symmetrise, rescale each objective by a power of two to a
   unit-order diagonal (exact); empty, non-finite (NaN out) and zero Gramians answered directly.
   The result is a :class:`~._problem.Problem`.
2. :mod:`._jitter`: whether ``G`` is singular within the precision of the input dtype, which
   sets the first rung of the jitter ladder (``0``, or about the rounding noise); answers found
   on a later rung are polished back to the first.
3. One solver, chosen by name in :mod:`._registry` (``"auto"`` by default):
   :mod:`._closed_form` (``m ≤ 2``), :mod:`._quadprog` (one dual QP per problem, or an exact
   primal QP in the range of a singular ``G``) or :mod:`._torch` (all problems at once by block
   principal pivoting, with a Lawson–Hanson fallback; its first guess in :mod:`._guess`, its
   linear systems in :mod:`._torch_blocks`).

Failure to solve (only for a matrix far from positive semi-definite) raises
:class:`DualConeSolverError` (a ``ValueError``), whichever solver ran.
"""

from ._errors import DualConeSolverError
from ._registry import DEFAULT_SOLVER, DualConeSolver, check_solver, solve_dual_cone
from ._torch import solve_dual_cone_torch, solve_dual_cone_torch_with_info

__all__ = [
    "DEFAULT_SOLVER",
    "DualConeSolver",
    "DualConeSolverError",
    "check_solver",
    "solve_dual_cone",
    "solve_dual_cone_torch",
    "solve_dual_cone_torch_with_info",
]
