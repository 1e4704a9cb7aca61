"""Gramians of the Jacobian of losses, computed layer by layer without the Jacobian.

:class:`Engine` records the calls of a model's layers and turns the losses into their
(generalized) Gramian, which a :class:`~jdoptim.aggregation.Weighting` turns into weights for
``losses.backward(weights)``.
"""

from ._engine import Engine

__all__ = ["Engine"]
