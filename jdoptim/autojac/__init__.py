"""Jacobians of several objectives: computed, stored in ``.jac`` and aggregated into ``.grad``.

The Jacobian with respect to a tensor ``t`` of ``m`` scalar objectives has shape ``[m, *t.shape]``.
:func:`backward` and :func:`mtl_backward` accumulate it into the ``.jac`` attribute of leaf tensors
(a plain Python attribute, accumulated across calls like ``.grad``), :func:`jac` returns it, and
:func:`jac_to_grad` aggregates the ``.jac`` fields into ``.grad``.
"""

from ._all_reduce_jac import all_reduce_jac
from ._backward import backward
from ._feature_backward import feature_backward
from ._jac import jac
from ._jac_to_grad import jac_to_grad
from ._mtl_backward import mtl_backward
from ._sharded_jac_to_grad import sharded_jac_to_grad

__all__ = [
    "all_reduce_jac",
    "backward",
    "feature_backward",
    "jac",
    "jac_to_grad",
    "mtl_backward",
    "sharded_jac_to_grad",
]
