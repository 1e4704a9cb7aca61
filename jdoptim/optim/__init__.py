"""``JacobianOptimizer``: Jacobian descent as a drop-in ``torch.optim`` optimizer.

The optimizer itself (:mod:`._optimizer`) keeps the ``torch.optim.Optimizer`` contract, checks
its arguments and dispatches; each mode computes a :class:`~._plan.Plan` (what to write) in a
module of its own, and nothing is written until the plan is complete. See ``CONTRIBUTING.md`` for
the map of the modules.
"""

from ._diagnostics import GroupDiagnostics
from ._errors import NonFiniteGradientError
from ._optimizer import JacobianOptimizer

__all__ = ["GroupDiagnostics", "JacobianOptimizer", "NonFiniteGradientError"]
