r"""Projection onto the dual cone of the rows of a Jacobian, as a small QP on its Gramian.

The projection of ``Jᵀu`` onto the dual cone ``{x : J x ≥ 0}`` of the rows of ``J`` is ``Jᵀv``
with ``v = argmin_v vᵀ G v  s.t.  v ≥ u`` and ``G = J Jᵀ``. UPGrad and DualProj reduce to this
problem, ``k`` times on one Gramian. Every solver goes through the same steps:

1. :mod:`._preprocess`: float64, symmetrise, scale to ``max(diag G) = 1``; empty, non-finite
   (NaN out) and zero Gramians answered directly.
2. :mod:`._jitter`: the jitter ladder, whose first rung follows the precision of the input
   dtype (``0`` for a numerically positive definite ``G``, about its rounding noise for a
   singular one); answers found on a later rung are polished back to the first.
3. One solver, chosen by name in :mod:`._registry`: :mod:`._closed_form` (``m ≤ 2``),
   :mod:`._quadprog` (one dual QP per problem) or :mod:`._torch` (all problems at once by block
   principal pivoting, with a Lawson–Hanson fallback; its linear systems in
   :mod:`._torch_blocks`).

Failure to solve (only for a matrix far from positive semi-definite) raises
:class:`DualConeSolverError`, whichever solver ran.
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
