"""jdoptim: Jacobian descent for PyTorch.

Train one model on several losses at once: compute the Jacobian of the losses (or only its
Gramian) and aggregate it into one update that does not sacrifice any objective. The cheaper
scalarizers of ``jdoptim.scalarization`` combine the loss values into one scalar instead.
"""

from . import aggregation, autogram, autojac, scalarization
from ._deprecated import backward, mtl_backward
from .optim import JacobianOptimizer, NonFiniteGradientError

__version__ = "0.1.0.dev0"

__all__ = [
    "JacobianOptimizer",
    "NonFiniteGradientError",
    "aggregation",
    "autogram",
    "autojac",
    "backward",
    "mtl_backward",
    "scalarization",
]
