"""Multi-task mode: the shared parameters get the aggregated Jacobian, computed through the
features; the task-specific parameters get the plain gradient of their task's loss."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..autojac._aggregate import all_finite
from ..autojac._checks import as_tensors, check_multipliers, check_require_grad
from ..autojac._multi_task import MultiTaskParams, compute_multi_task, resolve_params
from ._context import Context
from ._distributed import reduce_jacobian
from ._groups import aggregate_blocks
from ._jacobian_mode import NO_PARAMETER, loss_values
from ._plan import Plan


def plan_multi_task(
    context: Context,
    losses: list[Tensor],
    features: Tensor | Sequence[Tensor],
    grad_tensors: Tensor | Sequence[Tensor] | None,
    retain_graph: bool,
    aggregate: bool,
) -> Plan:
    """The plan of ``autojac.mtl_backward`` over the optimizer's parameters then, when
    ``aggregate``, the aggregation of each group's block of the shared Jacobian; otherwise the
    shared Jacobian goes to ``.jac`` (the task gradients to ``.grad`` either way)."""
    feature_list = as_tensors(features, "features")
    check_require_grad(feature_list, "features", " (compute it from the shared parameters)")
    multipliers = check_multipliers(grad_tensors, losses, "grad_tensors", leading_dim=False)
    found = resolve_params(losses, feature_list, None, None)
    shared_ids = {id(p) for p in found.shared}
    task_ids = {id(p) for params in found.tasks for p in params}
    refuse_keys_on_task_params(context, task_ids)
    # With a process group every parameter that is not task-specific gets a place in the buffer
    # (zero where unused), so that all ranks share its layout.
    blocks = context.blocks(None if context.sync.active else shared_ids, exclude=task_ids)
    shared = [p for block in blocks for p in block.params]
    owned = {id(p) for p in context.params}
    tasks = [[p for p in params if id(p) in owned] for params in found.tasks]
    if not shared and not any(tasks):
        raise ValueError(NO_PARAMETER)
    task_grads, jacobians = compute_multi_task(
        losses,
        feature_list,
        multipliers,
        MultiTaskParams(shared, tasks),
        retain_graph,
        context.parallel_chunk_size,
        shared_buffer=True,
    )
    task_updates = sum_per_param(tasks, task_grads)
    values = loss_values(losses, grad_tensors)
    if not aggregate:
        return Plan(
            grads=task_updates, jacs=list(zip(shared, jacobians, strict=True)), losses=values
        )
    task_params = [p for p, _ in task_updates]
    # The task-specific gradients (and the loss values, when read) travel with the Jacobian.
    extra = [update for _, update in task_updates] if context.sync.active else []
    if context.needs_losses:
        extra.append(values)
    matrix, reduced = reduce_jacobian(context.sync, jacobians, len(losses), extra)
    del jacobians
    if context.sync.active:
        task_updates = list(zip(task_params, reduced[: len(task_params)], strict=True))
    finite = all_finite([update for _, update in task_updates])
    with context.sync.same_randomness(matrix.device):
        return aggregate_blocks(
            blocks,
            matrix,
            len(context.groups),
            context.record_gramians,
            task_updates,
            finite,
            losses=reduced[-1] if context.needs_losses else None,
        )


def refuse_keys_on_task_params(context: Context, task_ids: set[int]) -> None:
    """A group ``"aggregator"`` key would be ignored by task-specific parameters: refused."""
    for i, params in enumerate(context.groups):
        if not context.keyed[i]:
            continue
        for param in params:
            if id(param) in task_ids:
                raise ValueError(
                    f"Parameter group {i} has an 'aggregator' key, but in multi-task mode (with "
                    f"`features`) its parameter of shape {list(param.shape)} is task-specific: it "
                    "gets the plain gradient of its task's loss, so the key would be ignored. "
                    "Keep 'aggregator' keys on groups of shared parameters only (put the "
                    "task-specific parameters in a group without the key)."
                )


def sum_per_param(
    tasks: list[list[Tensor]], task_grads: list[list[Tensor | None]]
) -> list[tuple[Tensor, Tensor]]:
    """One gradient per task-specific parameter: the sum over the tasks that use it."""
    sums: dict[int, tuple[Tensor, Tensor]] = {}
    for params, grads in zip(tasks, task_grads, strict=True):
        for param, grad in zip(params, grads, strict=True):
            if grad is None:
                continue
            previous = sums.get(id(param))
            sums[id(param)] = (param, grad if previous is None else previous[1] + grad)
    return list(sums.values())
