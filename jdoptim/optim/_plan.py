"""What one backward of the optimizer computed, and the one place where it is written.

Every mode computes a :class:`Plan` without touching any ``.grad`` or ``.jac``; only once the plan
is complete does :func:`write` apply it, out of place (the previous tensors stay intact, so a
transaction that keeps references to them can restore them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..autojac._jac_fields import delete_jac, get_jac, set_jac


@dataclass
class Plan:
    """The result of one backward, before anything is written.

    Attributes:
        grads: ``(param, update)`` pairs, ``update`` to be added to ``param.grad``.
        jacs: ``(param, jacobian)`` pairs, ``jacobian`` (``[m, *param.shape]``) to be added to
            ``param.jac`` (gradient accumulation).
        weights: the weights of each parameter group (``None`` where unknown).
        gramians: the square Gramian of each parameter group, for diagnostics (or ``None``).
        clear_jacs: parameters whose ``.jac`` is deleted (it was aggregated).
        known_finite: whether everything written is known to be finite without a check.
        backward: a weighted backward pass that writes ``.grad`` itself (Gramian mode), run by
            :func:`write` after the pairs.
        losses: the ``[m]`` loss values of the Jacobian's rows (detached), kept for a gradient
            accumulation whose aggregator reads them.
        value: the scalarized loss, detached (scalarizer mode), or ``None``.
    """

    grads: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    jacs: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    weights: tuple[Tensor | None, ...] = ()
    gramians: tuple[Tensor | None, ...] = ()
    clear_jacs: list[Tensor] = field(default_factory=list)
    known_finite: bool = False
    backward: Callable[[], None] | None = None
    losses: Tensor | None = None
    value: Tensor | None = None


def write(plan: Plan) -> None:
    """Adds the plan's updates to ``.grad`` and its Jacobians to ``.jac``, out of place."""
    with torch.no_grad():
        for param, update in plan.grads:
            update = update.detach().view(param.shape).to(param.dtype)
            param.grad = update if param.grad is None else param.grad + update
        for param, jacobian in plan.jacs:
            existing = get_jac(param)
            set_jac(param, jacobian if existing is None else existing + jacobian)
        for param in plan.clear_jacs:
            delete_jac(param)
    if plan.backward is not None:
        plan.backward()
