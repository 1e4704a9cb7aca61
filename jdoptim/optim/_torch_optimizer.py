"""The one place that depends on private parts of ``torch.optim.Optimizer``.

``JacobianOptimizer`` shares the wrapped optimizer's ``param_groups``, ``state`` and ``defaults``
instead of calling ``Optimizer.__init__`` (which would copy the groups). The attributes that
``Optimizer``'s own methods (``step`` hooks, ``state_dict`` hooks, ``__repr__``) expect are
private, so they are set here; if a torch release renames them, only this module changes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch.optim import Optimizer

# Torch optimizers whose ``step(closure)`` evaluates the closure once, before changing anything,
# and validate their arguments before updating: a failure leaves them untouched, so no copy of
# the parameters and state is needed to undo it.
VALIDATING_OPTIMIZERS: tuple[type[Optimizer], ...] = tuple(
    getattr(torch.optim, name)
    for name in (
        "SGD",
        "Adam",
        "AdamW",
        "Adamax",
        "Adagrad",
        "Adadelta",
        "Adafactor",
        "ASGD",
        "NAdam",
        "RAdam",
        "RMSprop",
        "Rprop",
        "SparseAdam",
    )
    if hasattr(torch.optim, name)
)


def init_optimizer_internals(optimizer: Optimizer) -> None:
    """Sets the hook dictionaries that ``Optimizer.__init__`` would have set, and wraps ``step``
    so that step hooks registered on ``optimizer`` fire."""
    hooks: Any = optimizer
    hooks._optimizer_step_pre_hooks = OrderedDict()
    hooks._optimizer_step_post_hooks = OrderedDict()
    hooks._optimizer_state_dict_pre_hooks = OrderedDict()
    hooks._optimizer_state_dict_post_hooks = OrderedDict()
    hooks._optimizer_load_state_dict_pre_hooks = OrderedDict()
    hooks._optimizer_load_state_dict_post_hooks = OrderedDict()
    hooks._warned_capturable_if_run_uncaptured = True
    hooks._patch_step_function()


def state_dict_hooks(optimizer: Optimizer, kind: str) -> list[Any]:
    """The ``state_dict`` hooks registered on ``optimizer``: ``kind`` is ``"state_dict_pre"``,
    ``"state_dict_post"``, ``"load_state_dict_pre"`` or ``"load_state_dict_post"``."""
    hooks: dict[int, Any] = getattr(optimizer, f"_optimizer_{kind}_hooks")
    return list(hooks.values())
