"""The one place that depends on private parts of ``torch.optim.Optimizer``.

``JacobianOptimizer`` shares the wrapped optimizer's ``param_groups``, ``state`` and ``defaults``
instead of calling ``Optimizer.__init__`` (which would copy the groups). The attributes that
``Optimizer``'s own methods (``step`` hooks, ``state_dict`` hooks, ``__repr__``) expect are
private, so they are set here; if a torch release renames them, only this module changes.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
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


def save_with_hooks(optimizer: Optimizer, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``make()`` between the ``state_dict`` pre- and post-hooks registered on ``optimizer``."""
    for pre_hook in _hooks(optimizer, "state_dict_pre"):
        pre_hook(optimizer)
    state_dict: dict[str, Any] = make()
    for post_hook in _hooks(optimizer, "state_dict_post"):
        result = post_hook(optimizer, state_dict)
        if result is not None:
            state_dict = dict(result)
    return state_dict


def load_with_hooks(
    optimizer: Optimizer, state_dict: Any, load: Callable[[dict[str, Any]], None]
) -> None:
    """``load`` (on a copy of ``state_dict``) between the ``load_state_dict`` hooks."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"`state_dict` must be a dict, but got {type(state_dict).__name__}.")
    state_dict = dict(state_dict)
    for pre_hook in _hooks(optimizer, "load_state_dict_pre"):
        result = pre_hook(optimizer, state_dict)
        if result is not None:
            state_dict = result
    load(state_dict)
    for post_hook in _hooks(optimizer, "load_state_dict_post"):
        post_hook(optimizer)


def _hooks(optimizer: Optimizer, kind: str) -> list[Any]:
    hooks: dict[int, Any] = getattr(optimizer, f"_optimizer_{kind}_hooks")
    return list(hooks.values())


class SharedAttributes:
    """``param_groups``, ``state`` and ``defaults`` that are those of a wrapped optimizer
    (``self._inner``): the same objects, so that schedulers and scalers acting on either see the
    same groups."""

    _inner: Optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's parameter groups (the same list)."""
        return self._inner.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._inner.param_groups = value

    @property
    def state(self) -> defaultdict[Tensor, Any]:
        """The wrapped optimizer's per-parameter state (the same dict)."""
        return self._inner.state

    @state.setter
    def state(self, value: defaultdict[Tensor, Any]) -> None:
        self._inner.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        """The wrapped optimizer's defaults (the same dict)."""
        return self._inner.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._inner.defaults = value

    @property
    def optimizer(self) -> Optimizer:
        """The wrapped optimizer."""
        return self._inner
