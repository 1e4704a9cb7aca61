"""A step with a closure, and what scalarizer mode adds to it.

Stateful scalarizers observe only the first evaluation of a step (LBFGS evaluates several times):
DWA accumulates once per step and FAMO remembers the losses at the start of the step. After a
successful step, a scalarizer that learns from it (FAMO, which has ``update``) gets the losses of
the same batch evaluated again under ``torch.no_grad()``: the hand-written loop "scalarize,
backward, step, re-evaluate, update".
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._distributed import Sync
from ._scalarizer_mode import reduced_values


class FirstEvaluation:
    """The closure given to the wrapped optimizer: it counts the evaluations, and when a second
    one starts it captures the scalarizer's state as the first left it; :meth:`restore` puts that
    state back. Parameters are not captured (the step changes them); only buffers and extra
    state. Optimizers that evaluate once pay nothing."""

    def __init__(self, evaluate: Callable[[], Any], scalarizer: nn.Module) -> None:
        self._evaluate = evaluate
        self._scalarizer = scalarizer
        self._count = 0
        self._snapshot: dict[str, Any] | None = None

    def __call__(self) -> Any:
        if self._count == 1:
            self._snapshot = _state_without_parameters(self._scalarizer)
        self._count += 1
        return self._evaluate()

    def restore(self) -> None:
        if self._snapshot is not None:
            self._scalarizer.load_state_dict(self._snapshot, strict=False)


def _state_without_parameters(module: nn.Module) -> dict[str, Any]:
    state = dict(module.state_dict())
    for name, _ in module.named_parameters():
        state.pop(name, None)
    return {
        key: value.clone() if isinstance(value, Tensor) else copy.deepcopy(value)
        for key, value in state.items()
    }


def closure_step(
    inner: Optimizer,
    evaluate: Callable[[], Any],
    transaction: AbstractContextManager[Any],
    scalarizer: nn.Module | None,
    closure: Callable[[], Any],
    sync: Sync,
) -> Any:
    """``inner.step(evaluate)`` in ``transaction``; in scalarizer mode, the scalarizer's state as
    the first evaluation left it, then, for a scalarizer with ``update``, the losses of
    ``closure`` evaluated again and given to it.

    The update runs after a successful step, outside the transaction: if the re-evaluation or
    the update raises, the step stays applied (undoing it would need a copy of every parameter
    and of the optimizer's state at every step) and the scalarizer keeps its state.
    """
    if scalarizer is None:
        with transaction:
            return inner.step(evaluate)
    first = FirstEvaluation(evaluate, scalarizer)
    with transaction:
        result = inner.step(first)
        first.restore()
    update = getattr(scalarizer, "update", None)
    if callable(update):
        with torch.no_grad():
            losses = closure()
        if losses is None:
            raise ValueError(
                f"`closure` must return the losses when the scalarizer learns from the step "
                f"({scalarizer!r} has `update`): after the step they are evaluated again on the "
                "same batch, under torch.no_grad(), and given to `scalarizer.update`. The closure "
                "returned None; the step was applied, the scalarizer was not updated."
            )
        update(reduced_values(losses, sync))
    return result
