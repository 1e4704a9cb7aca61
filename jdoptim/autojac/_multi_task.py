"""The multi-task algorithm: task gradients and the shared Jacobian, computed through the features.

Shared by :func:`~jdoptim.autojac.mtl_backward` (which writes ``.grad``/``.jac``) and the
multi-task mode of :class:`~jdoptim.JacobianOptimizer` (which aggregates before writing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import as_tensors, check_accumulable, check_no_duplicates
from ._chunk_size import ChunkSize, compiled_regions, survey_graph
from ._graph import leaves_in_order_of_first_use
from ._jacobian import compute_jacobians, own, storage_keys


class MultiTaskParams(NamedTuple):
    """Who receives what: the shared parameters (a Jacobian) and each task's own (a gradient)."""

    shared: list[Tensor]
    tasks: list[list[Tensor]]


class MultiTaskJacobians(NamedTuple):
    """Each task's gradient with respect to its own parameters (None where unused), and the
    Jacobian ``[m, *p.shape]`` of the losses with respect to each shared parameter."""

    task_grads: list[list[Tensor | None]]
    shared_jacobians: list[Tensor]


def resolve_params(
    losses: Sequence[Tensor],
    features: Sequence[Tensor],
    tasks_params: Iterable[Iterable[Tensor]] | None,
    shared_params: Iterable[Tensor] | None,
) -> MultiTaskParams:
    """The shared and task-specific parameters, explicit or found by walking the graph.

    Defaults: the shared parameters are the leaves requiring grad used to compute ``features``
    (in order of first use); task ``i``'s are the leaves used to compute loss ``i`` other than
    through ``features``, minus the shared ones. Raises ``ValueError`` when a feature is used by
    no loss, or when a loss depends on a shared parameter other than through ``features`` (a
    penalty on the trunk added to a task loss, a weight tied between the trunk and a head): the
    Jacobian computed through the features would silently miss that dependence.
    """
    direct_leaves: list[list[Tensor]] = []
    reached = [False] * len(features)
    for loss in losses:
        leaves, reached_by_loss = leaves_in_order_of_first_use([loss], stop_at=features)
        direct_leaves.append(leaves)
        reached = [a or b for a, b in zip(reached, reached_by_loss, strict=True)]
    for i, was_reached in enumerate(reached):
        if not was_reached:
            raise ValueError(
                f"`features` must be used to compute the losses, but element {i} of shape "
                f"{list(features[i].shape)} is not used by any of them."
            )

    if shared_params is None:
        shared, _ = leaves_in_order_of_first_use(features)
    else:
        shared = as_tensors(shared_params, "shared_params")
        check_accumulable(shared, "shared_params")
        check_no_duplicates(shared, "shared_params")
    shared_ids = {id(param) for param in shared}
    for i, leaves in enumerate(direct_leaves):
        for leaf in leaves:
            if id(leaf) in shared_ids:
                raise ValueError(
                    "`features` must carry every dependence of the losses on the shared "
                    f"parameters, but loss {i} uses a shared parameter of shape "
                    f"{list(leaf.shape)} other than through `features` (e.g. a penalty on the "
                    "trunk's weights added to the loss, or a weight tied between the trunk and a "
                    "head). Add such terms as a loss of their own, or compute the Jacobian of "
                    "all parameters without `features`."
                )

    if tasks_params is None:
        tasks = [
            [leaf for leaf in leaves if id(leaf) not in shared_ids] for leaves in direct_leaves
        ]
        return MultiTaskParams(shared, tasks)
    if isinstance(tasks_params, Tensor) or not isinstance(tasks_params, Iterable):
        raise TypeError(
            "`tasks_params` must be a sequence of iterables of parameters, one per loss, but got "
            f"{type(tasks_params).__name__}."
        )
    task_list = list(tasks_params)
    if len(task_list) != len(losses):
        raise ValueError(
            f"`tasks_params` must contain one iterable of parameters per loss ({len(losses)}), "
            f"but got {len(task_list)}."
        )
    tasks = [as_tensors(params, "tasks_params") for params in task_list]
    for params in tasks:
        check_accumulable(params, "tasks_params")
        check_no_duplicates(params, "tasks_params")
        for param in params:
            if id(param) in shared_ids:
                raise ValueError(
                    "`tasks_params` and `shared_params` must not overlap, but a parameter of "
                    f"shape {list(param.shape)} is in both."
                )
    return MultiTaskParams(shared, tasks)


def compute_multi_task(
    losses: Sequence[Tensor],
    features: Sequence[Tensor],
    grad_tensors: Sequence[Tensor] | None,
    params: MultiTaskParams,
    retain_graph: bool,
    parallel_chunk_size: ChunkSize,
    shared_buffer: bool,
) -> MultiTaskJacobians:
    """The task gradients and the shared Jacobian; writes no ``.grad`` nor ``.jac``.

    One backward pass per task through its head gives its own parameters' gradient and the
    gradient of its loss with respect to the features (``grad_tensors[i]`` weighting the
    elements of loss ``i``); these rows are stacked into the Jacobian of the losses with respect
    to the features, which is then pulled back through the trunk to the shared parameters in
    vectorised chunks (``compute_jacobians``). Measured against one vectorised pass through
    all the heads at once, this is as fast for few tasks and faster for many (the heads of other
    tasks are not traversed).
    """
    task_grads, jac_features = task_and_feature_gradients(
        losses, features, grad_tensors, params.tasks
    )
    jacobians: list[Tensor] = []
    if params.shared:
        jacobians = compute_jacobians(
            features,
            params.shared,
            jac_features,
            retain_graph,
            parallel_chunk_size,
            shared_buffer=shared_buffer,
        )
    return MultiTaskJacobians(task_grads, jacobians)


def task_and_feature_gradients(
    losses: Sequence[Tensor],
    features: Sequence[Tensor],
    grad_tensors: Sequence[Tensor] | None,
    tasks: list[list[Tensor]],
) -> tuple[list[list[Tensor | None]], list[Tensor]]:
    """One backward pass per task through its head (the graph is kept): each task's gradient with
    respect to its own parameters (None where unused), and the Jacobian ``[m, *feature.shape]``
    of the losses with respect to each feature (``grad_tensors[i]`` weighting loss ``i``)."""
    protected = storage_keys(grad_tensors or [])
    task_grads: list[list[Tensor | None]] = []
    feature_grads: list[list[Tensor]] = [[] for _ in features]
    # The passes through the heads keep the graph for the trunk: compiled heads must allow it.
    with compiled_regions(survey_graph(losses).compiled, several_passes=True):
        for i, (loss, own_params) in enumerate(zip(losses, tasks, strict=True)):
            grads: Sequence[Tensor | None] = torch.autograd.grad(
                loss,
                [*own_params, *features],
                grad_outputs=None if grad_tensors is None else grad_tensors[i],
                retain_graph=True,
                allow_unused=True,
            )
            task_grads.append(
                [None if g is None else own(g, protected) for g in grads[: len(own_params)]]
            )
            for grads_of_feature, feature, grad in zip(
                feature_grads, features, grads[len(own_params) :], strict=True
            ):
                grads_of_feature.append(torch.zeros_like(feature) if grad is None else grad)
    return task_grads, [torch.stack(grads) for grads in feature_grads]


def pull_back(
    features: Sequence[Tensor],
    shared: Sequence[Tensor],
    feature_update: Sequence[Tensor],
    retain_graph: bool,
) -> list[Tensor]:
    """The gradient of ``Σ <feature_update_k, features_k>`` with respect to each shared parameter:
    one ordinary backward pass through the trunk (zeros for unused parameters)."""
    with compiled_regions(survey_graph(features).compiled, several_passes=retain_graph):
        grads = torch.autograd.grad(
            list(features),
            list(shared),
            grad_outputs=list(feature_update),
            retain_graph=retain_graph,
            allow_unused=True,
        )
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, shared, strict=True)]
