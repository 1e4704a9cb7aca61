"""Scalarizer mode: the losses combined into one scalar by a scalarizer, one ordinary backward.

``s = scalarizer(losses)`` is back-propagated in one pass of the autograd engine, through the
scalarizer (reaching its learned parameters: UW's ``log_var``, IMTLL's ``log_scale``) and the
model; a hook on the losses reads on the way the weights actually used, ``w = ∂s/∂L``. With a
process group, the scalarizer runs instead on the mean ``L̄`` of the ranks' losses (a detached
leaf), so every rank's scalarizer sees the same values (its state never drifts apart); its
gradient ``w = ∂s/∂L̄`` weights this rank's losses, ``losses.backward(w)`` by the chain rule, and
the weighted gradients are averaged in one flat all-reduce.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import LBFGS, Optimizer

from ..autojac._checks import as_tensors
from ..autojac._matrix import split_update
from ..scalarization import Scalarizer
from ._context import Context
from ._distributed import Sync
from ._gramian_mode import stack_losses
from ._jacobian_mode import NO_PARAMETER
from ._plan import Plan, backward_out_of_place

# Torch optimizers that only use their first parameter group: the learned parameters of a
# scalarizer cannot be given to them as a group of their own.
SINGLE_GROUP_OPTIMIZERS: tuple[type[Optimizer], ...] = (LBFGS,)


def learned_parameters(scalarizer: nn.Module) -> list[Tensor]:
    """The scalarizer's parameters that its gradient teaches (those that require grad)."""
    return [p for p in scalarizer.parameters() if p.requires_grad]


def add_learned_parameters(optimizer: Optimizer, scalarizer: nn.Module) -> None:
    """Adds the learned parameters missing from ``optimizer`` as one new last group.

    Parameters the user already put in any group (with any options) are left there, so nothing
    is ever added twice. A forgotten learned parameter would fail silently (UW's log-variances
    would stay 0), hence the automatic group.
    """
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in learned_parameters(scalarizer) if id(p) not in owned]
    if not missing:
        return
    if isinstance(optimizer, SINGLE_GROUP_OPTIMIZERS):
        raise ValueError(
            f"`scalarizer` {scalarizer!r} has learned parameters that the wrapped "
            f"{type(optimizer).__name__} does not hold, and {type(optimizer).__name__} uses only "
            "one parameter group, so they cannot be added as a group of their own: put them in "
            "its one group, e.g. `LBFGS([*model.parameters(), *scalarizer.parameters()])`."
        )
    optimizer.add_param_group({"params": missing})


def plan_scalarized(
    scalarizer: Scalarizer, context: Context, losses: list[Tensor], retain_graph: bool
) -> Plan:
    """The plan of ``scalarizer(losses).backward()`` over the optimizer's parameters."""
    groups, sync = context.groups, context.sync
    values = stack_losses(losses)
    _check_device(scalarizer, values.device)
    params = [p for group in groups for p in group]
    if not params:
        raise ValueError(NO_PARAMETER)
    if not sync.active:
        return _plan_one_backward(scalarizer, values, params, len(groups), retain_graph)
    # With a process group, the scalarizer sees the mean of the ranks' losses (a detached leaf
    # `L̄`); its gradient `w = ∂s/∂L̄` weights this rank's losses, and the gradients are averaged
    # here (DDP's reducer is bypassed): every parameter gets a place in the buffer (zero where
    # unused), so that all ranks share its layout: one collective for the whole model.
    leaf = values.detach().clone()
    sync.all_reduce(leaf)
    leaf.requires_grad_(True)
    owned = {id(p) for p in params}
    learned = [p for p in learned_parameters(scalarizer) if id(p) in owned]
    with torch.enable_grad(), sync.same_randomness(values.device):
        value = scalarizer(leaf)
    _check_value(value, scalarizer)
    weights, *learned_grads = torch.autograd.grad(value, [leaf, *learned], allow_unused=True)
    weights = torch.zeros_like(leaf) if weights is None else weights.detach()
    grads = torch.autograd.grad(
        values, params, grad_outputs=weights, retain_graph=retain_graph, allow_unused=True
    )
    buffer = torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for p, g in zip(params, grads, strict=True)
        ]
    )
    sync.all_reduce(buffer)
    learned_pairs = [(p, g) for p, g in zip(learned, learned_grads, strict=True) if g is not None]
    return Plan(
        grads=[*zip(params, split_update(buffer, params), strict=True), *learned_pairs],
        weights=tuple(weights for _ in groups),
        gramians=tuple(None for _ in groups),
        value=value.detach(),
    )


def _plan_one_backward(
    scalarizer: Scalarizer, values: Tensor, params: list[Tensor], n_groups: int, retain_graph: bool
) -> Plan:
    """``s = scalarizer(losses)`` and its one ordinary backward pass, run by the plan.

    One pass of the autograd engine through the scalarizer and the model, as ``s.backward()``
    (so that the hooks of a DistributedDataParallel wrapper average the gradients as they do for
    ``loss.backward()``); the weights ``w = ∂s/∂L`` are read on the way by a hook on the losses.
    """
    with torch.enable_grad():
        value = scalarizer(values)
    _check_value(value, scalarizer)
    learned = {id(p) for p in learned_parameters(scalarizer)}
    model_params = [p for p in params if id(p) not in learned]
    gradients: list[Tensor] = []  # what the hook saw, `∂s/∂L` (none if s ignores the losses)

    def reached_the_model() -> None:
        # Without a walk of the graph: when the losses depend on no parameter of the model, none
        # of them got a gradient (the scalarizer's own may have).
        if all(p.grad is None for p in model_params):
            raise ValueError(NO_PARAMETER)

    def backward() -> None:
        handle = values.register_hook(gradients.append)  # type: ignore[no-untyped-call]
        try:
            backward_out_of_place(value, None, params, retain_graph, reached_the_model)
        finally:
            handle.remove()
        weights = gradients[0].detach() if gradients else torch.zeros_like(values.detach())
        plan.weights = tuple(weights for _ in range(n_groups))

    plan = Plan(gramians=tuple(None for _ in range(n_groups)), value=value.detach())
    plan.backward = backward
    return plan


def _check_device(scalarizer: nn.Module, device: torch.device) -> None:
    """Refuses a scalarizer whose parameters or buffers are not on the losses' device."""
    for name, tensor in [*scalarizer.named_parameters(), *scalarizer.named_buffers()]:
        if tensor.device != device:
            raise ValueError(
                f"`scalarizer` must be on the device of the losses ({device}), but its `{name}` "
                f"is on {tensor.device}: move it with `scalarizer.to({str(device)!r})`."
            )


def _check_value(value: Any, scalarizer: nn.Module) -> None:
    if not isinstance(value, Tensor) or value.dim() != 0:
        shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"`scalarizer` must return a 0-d tensor, but {scalarizer!r} gave {shape}.")
    if not value.requires_grad:
        raise ValueError(
            f"`scalarizer` must return a value differentiable with respect to the losses, but "
            f"{scalarizer!r} returned a tensor that does not require grad."
        )


def reduced_values(losses: Any, sync: Sync) -> Tensor:
    """The detached losses as one tensor, averaged over the ranks (what the scalarizer saw)."""
    values = stack_losses(as_tensors(losses, "losses")).detach()
    if sync.active:
        values = values.clone()
        sync.all_reduce(values)
    return values
