"""One transaction: whatever a call of the optimizer changes is restored if the call raises."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .._shared_random import SharedRandomness
from ..autojac._jac_fields import delete_jac, get_jac, set_jac


class Transaction:
    """A context manager that restores the optimizer's world when its block raises.

    Always captured (cheap): every parameter's ``.grad`` and ``.jac`` (references: the optimizer
    writes them out of place), the state of every stateful module (aggregators, weightings:
    clones of their state dicts) and the shared generator of a distributed optimizer. On request:
    the parameters' values (``params``) and the wrapped optimizer's state and hyperparameters
    (``inner_state``), for inner optimizers that may change them before failing.

    Example (inside jdoptim)::

        with Transaction(inner, modules, shared_random, params=True, inner_state=True):
            inner.step(closure)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        modules: Sequence[nn.Module],
        shared_random: SharedRandomness | None = None,
        *,
        params: bool = False,
        inner_state: bool = False,
    ) -> None:
        self._optimizer = optimizer
        self._modules = modules
        self._shared_random = shared_random
        self._params = params
        self._inner_state = inner_state

    def __enter__(self) -> Transaction:
        params = [p for group in self._optimizer.param_groups for p in group["params"]]
        self._fields = [(p, p.grad, get_jac(p)) for p in params]
        self._module_states = [
            (module, _clone(state)) for module in self._modules if (state := module.state_dict())
        ]
        self._rng = None if self._shared_random is None else self._shared_random.state()
        self._values = [(p, p.detach().clone()) for p in params] if self._params else []
        if self._inner_state:
            inner = self._optimizer
            self._groups, self._state = inner.param_groups, inner.state
            self._state_copy = {key: copy.deepcopy(value) for key, value in inner.state.items()}
            self._hyperparameters = [
                {k: copy.deepcopy(v) for k, v in group.items() if k not in ("params", "aggregator")}
                for group in inner.param_groups
            ]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.rollback()

    def rollback(self) -> None:
        """Puts back everything captured on entry."""
        with torch.no_grad():
            for param, value in self._values:
                param.copy_(value)
        for param, grad, jacobian in self._fields:
            param.grad = grad
            if jacobian is None:
                delete_jac(param)
            else:
                set_jac(param, jacobian)
        for module, state in self._module_states:
            module.load_state_dict(state)
        if self._shared_random is not None:
            self._shared_random.load_state(self._rng)
        if self._inner_state:
            inner = self._optimizer
            inner.param_groups, inner.state = self._groups, self._state
            inner.state.clear()
            inner.state.update(self._state_copy)
            for group, saved in zip(inner.param_groups, self._hyperparameters, strict=True):
                group.update(saved)


def _clone(state: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.clone() if isinstance(value, Tensor) else copy.deepcopy(value)
        for key, value in state.items()
    }
