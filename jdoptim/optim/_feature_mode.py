"""Feature-level multi-task mode: the Jacobian of the losses with respect to the features is
aggregated, and the aggregated feature gradient is backpropagated once through the trunk."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..autojac._aggregate import aggregate_matrix, all_finite
from ..autojac._checks import as_tensors, check_multipliers, check_require_grad
from ..autojac._jac_to_grad import check_update
from ..autojac._matrix import split_update, to_matrix
from ..autojac._multi_task import pull_back, resolve_params, task_and_feature_gradients
from ._context import Context
from ._jacobian_mode import NO_PARAMETER, loss_values
from ._multi_task_mode import refuse_keys_on_task_params, sum_per_param
from ._plan import Plan


def check_aggregate_at(aggregate_at: object, features: object, aggregate: bool, sync: bool) -> bool:
    """Whether ``aggregate_at`` asks for the feature-level mode, checked against the rest."""
    if aggregate_at not in ("parameters", "features"):
        raise ValueError(
            f'`aggregate_at` must be "parameters" or "features", but got {aggregate_at!r}.'
        )
    if aggregate_at == "parameters":
        return False
    if features is None:
        raise ValueError('`aggregate_at="features"` needs `features`: pass the shared features.')
    if not aggregate:
        raise ValueError(
            '`aggregate_at="features"` cannot accumulate (`aggregate=False`): the features of '
            "different micro-batches differ, so their Jacobians cannot be summed."
        )
    if sync:
        raise ValueError(
            '`aggregate_at="features"` is not available with `process_group` in this version: '
            'use the exact multi-task mode (`aggregate_at="parameters"`).'
        )
    return True


def plan_feature_level(
    context: Context,
    losses: list[Tensor],
    features: Tensor | Sequence[Tensor],
    grad_tensors: Tensor | Sequence[Tensor] | None,
    retain_graph: bool,
) -> Plan:
    """Task gradients to the task-specific parameters; ``A(J_z)`` of the feature Jacobian
    backpropagated once to the shared parameters (the plan of ``autojac.feature_backward``)."""
    feature_list = as_tensors(features, "features")
    check_require_grad(feature_list, "features", " (compute it from the shared parameters)")
    multipliers = check_multipliers(grad_tensors, losses, "grad_tensors", leading_dim=False)
    found = resolve_params(losses, feature_list, None, None)
    task_ids = {id(p) for params in found.tasks for p in params}
    refuse_keys_on_task_params(context, task_ids)
    for i in range(len(context.groups)):
        if context.keyed[i]:
            raise ValueError(
                f"Parameter group {i} has an 'aggregator' key, but the feature-level mode "
                '(`aggregate_at="features"`) aggregates one Jacobian, of the features, with the '
                'default aggregator: remove the key, or use `aggregate_at="parameters"`.'
            )
    owned = {id(p) for p in context.params}
    shared = [p for p in found.shared if id(p) in owned]
    tasks = [[p for p in params if id(p) in owned] for params in found.tasks]
    if not shared and not any(tasks):
        raise ValueError(NO_PARAMETER)
    task_grads, jac_features = task_and_feature_gradients(losses, feature_list, multipliers, tasks)
    _, matrix = to_matrix(jac_features, len(losses))
    del jac_features
    aggregator = context.aggregators[0]  # no group has a key: every entry is the default
    values = loss_values(losses, grad_tensors)
    with torch.no_grad(), context.sync.same_randomness(matrix.device):
        result = aggregate_matrix(
            aggregator, matrix, record_gramian=context.record_gramians, losses=values
        )
    check_update(result.update, matrix, aggregator)
    feature_update = [
        part.to(feature.dtype)
        for part, feature in zip(
            split_update(result.update, feature_list), feature_list, strict=True
        )
    ]
    shared_grads = pull_back(feature_list, shared, feature_update, retain_graph) if shared else []
    task_updates = sum_per_param(tasks, task_grads)
    shared_ids = {id(p) for p in shared}
    holds_shared = [any(id(p) in shared_ids for p in params) for params in context.groups]
    finite = result.known_finite and all_finite([u for _, u in task_updates])
    return Plan(
        grads=[*task_updates, *zip(shared, shared_grads, strict=True)],
        weights=tuple(result.weights if held else None for held in holds_shared),
        gramians=tuple(result.gramian if held else None for held in holds_shared),
        known_finite=finite and all(p.dtype != torch.float16 for p in shared),
    )
