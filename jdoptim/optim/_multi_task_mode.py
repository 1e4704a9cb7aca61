"""Multi-task mode: the shared parameters get the aggregated Jacobian, computed through the
features; the task-specific parameters get the plain gradient of their task's loss."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..autojac._aggregate import all_finite
from ..autojac._checks import as_tensors, check_multipliers, check_require_grad
from ..autojac._matrix import split_update, to_matrix
from ..autojac._multi_task import MultiTaskParams, compute_multi_task, resolve_params
from ._context import Context
from ._groups import aggregate_blocks
from ._jacobian_mode import NO_PARAMETER
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
    _refuse_keys_on_task_params(context, task_ids)
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
    task_updates = _sum_per_param(tasks, task_grads)
    if not aggregate:
        return Plan(grads=task_updates, jacs=list(zip(shared, jacobians, strict=True)))
    m = len(losses)
    if context.sync.active:
        # The task-specific gradients travel in the same buffer: one collective per step.
        task_params = [p for p, _ in task_updates]
        buffer, matrix = to_matrix(jacobians, m, extra=[u for _, u in task_updates])
        tail = buffer[matrix.numel() :]
        for part, (_, update) in zip(split_update(tail, task_params), task_updates, strict=True):
            part.copy_(update)
        context.sync.all_reduce(buffer)
        reduced = tail.clone()  # so that the .grad do not keep the Jacobian buffer alive
        task_updates = list(zip(task_params, split_update(reduced, task_params), strict=True))
    else:
        buffer, matrix = to_matrix(jacobians, m)
    del jacobians
    finite = all_finite([update for _, update in task_updates])
    with context.sync.same_randomness(matrix.device):
        return aggregate_blocks(
            blocks, matrix, len(context.groups), context.record_gramians, task_updates, finite
        )


def _refuse_keys_on_task_params(context: Context, task_ids: set[int]) -> None:
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


def _sum_per_param(
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
