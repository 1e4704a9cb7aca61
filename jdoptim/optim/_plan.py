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


def backward_out_of_place(
    output: Tensor,
    grad_tensors: Tensor | None,
    inputs: list[Tensor],
    retain_graph: bool,
    check: Callable[[], None] | None = None,
) -> None:
    """``torch.autograd.backward`` into the ``.grad`` of ``inputs``, accumulated out of place: the
    previous ``.grad`` tensors stay intact, for the caller's transaction to restore. ``check``
    runs while ``.grad`` holds the new gradients alone; if it or the backward raises, nothing is
    written."""
    previous = [(p, p.grad) for p in inputs if p.grad is not None]
    for param, _ in previous:
        param.grad = None
    try:
        torch.autograd.backward(
            output, grad_tensors=grad_tensors, retain_graph=retain_graph, inputs=inputs
        )
        if check is not None:
            check()
    except BaseException:
        for param in inputs:
            param.grad = None
        raise
    finally:
        for param, grad in previous:
            param.grad = grad if param.grad is None else grad + param.grad


class Records:
    """What the optimizer remembers of the plans it wrote: weights, Gramians, pending accumulation.

    Kept in one object so that every view of the optimizer shares them (PyTorch Lightning wraps
    optimizers in objects that read, but do not write, our attributes).
    """

    def __init__(self) -> None:
        self.last_weights: tuple[Tensor | None, ...] = ()
        self.gramians: tuple[Tensor | None, ...] = ()
        # The scalarized loss of the last backward (scalarizer mode).
        self.value: Tensor | None = None
        # Whether everything the last backward wrote into .grad is known to be finite.
        self.wrote_finite = False
        # Whether Jacobians accumulated by backward(aggregate=False) await aggregate(), and the
        # sum of their loss values (for aggregators that read them).
        self.pending = False
        self.pending_losses: Tensor | None = None

    def record(self, plan: Plan) -> None:
        if plan.weights or plan.gramians:
            self.last_weights, self.gramians = plan.weights, plan.gramians
        self.value = plan.value
        self.wrote_finite = plan.known_finite and not plan.jacs
        if plan.jacs:
            self.pending = True
            previous, new = self.pending_losses, plan.losses
            self.pending_losses = new if previous is None or new is None else previous + new

    def clear_pending(self) -> None:
        self.pending, self.pending_losses = False, None
