"""``feature_backward``: multi-task Jacobian descent in feature space, one pass through a trunk."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..aggregation import Aggregator
from ._aggregate import aggregate_matrix
from ._checks import (
    as_tensors,
    check_aggregator,
    check_multipliers,
    check_no_duplicates,
    check_outputs,
    check_require_grad,
)
from ._jac_fields import accumulate_grads
from ._jac_to_grad import check_update
from ._matrix import split_update, to_matrix
from ._multi_task import pull_back, resolve_params, task_and_feature_gradients


def feature_backward(
    tensors: Tensor | Sequence[Tensor],
    /,
    features: Tensor | Sequence[Tensor],
    aggregator: Aggregator,
    *,
    grad_tensors: Tensor | Sequence[Tensor] | None = None,
    tasks_params: Iterable[Iterable[Tensor]] | None = None,
    shared_params: Iterable[Tensor] | None = None,
    retain_graph: bool = False,
    losses: Tensor | None = None,
) -> Tensor | None:
    r"""Multi-task backward that aggregates the Jacobian with respect to the *features*.

    For a model made of a shared trunk computing ``features`` :math:`z` and one head per task
    computing the task loss :math:`\ell_i`, this

    * accumulates the ordinary gradient of each task loss into the ``.grad`` of that task's own
      parameters (as :func:`mtl_backward` does);
    * computes the Jacobian :math:`J_z` of the losses with respect to the features, one row per
      task (``[m, Z]`` with ``Z`` the number of elements of the features: per-sample features of
      shape ``[b, d]`` give ``Z = b·d``), one backward pass per task through its head;
    * aggregates it with ``aggregator`` into one feature gradient :math:`A(J_z)` and
      backpropagates it **once** through the trunk, accumulating
      :math:`(\partial z / \partial \theta_s)^\top A(J_z)` into the shared parameters' ``.grad``.

    This is exact Jacobian descent *in feature space*: the update does not conflict with any
    task's gradient with respect to the features (for a non-conflicting aggregator such as
    UPGrad). In parameter space it is an approximation — the shared Jacobian is never formed,
    so the update can conflict with a task's gradient with respect to the shared parameters —
    in exchange for a cost close to the summed-loss step (the trunk is traversed once, not
    ``m`` times). This is the "MGDA-UB" idea of Sener & Koltun (2018) applied to any aggregator;
    :func:`mtl_backward` + :func:`jac_to_grad` is the exact alternative.

    Args:
        tensors: the task losses, one per task; scalars, or any shape with ``grad_tensors``.
        features: the shared representation(s) from which the heads compute the losses.
        aggregator: the aggregator of the ``[m, Z]`` feature Jacobian.
        grad_tensors: one tensor per loss, of the loss's shape, weighting its elements.
        tasks_params: one iterable of parameters per task (default: found from the graph, as
            in :func:`mtl_backward`).
        shared_params: the parameters that receive the backpropagated feature gradient
            (default: the leaves used to compute ``features``).
        retain_graph: keep the graph after the pass through the trunk.
        losses: the ``[m]`` loss values, for aggregators that read them (detached).

    Returns:
        The weights the aggregator gave the tasks, when it reports them, else ``None``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from jdoptim.aggregation import UPGrad
        >>> from jdoptim.autojac import feature_backward
        >>> _ = torch.manual_seed(0)
        >>> trunk, head1, head2 = nn.Linear(3, 2), nn.Linear(2, 1), nn.Linear(2, 1)
        >>> features = trunk(torch.randn(4, 3))
        >>> losses = [head1(features).square().mean(), head2(features).abs().mean()]
        >>> weights = feature_backward(losses, features, UPGrad())
        >>> trunk.weight.grad.shape, head1.weight.grad.shape, weights.shape
        (torch.Size([2, 3]), torch.Size([1, 2]), torch.Size([2]))
    """
    loss_list = as_tensors(tensors, "tensors")
    check_outputs(loss_list, "tensors")
    feature_list = as_tensors(features, "features")
    check_require_grad(feature_list, "features")
    check_no_duplicates(feature_list, "features")
    check_aggregator(aggregator)
    multipliers = check_multipliers(grad_tensors, loss_list, "grad_tensors", leading_dim=False)
    if multipliers is None:
        for i, loss in enumerate(loss_list):
            if loss.numel() != 1:
                raise ValueError(
                    "`tensors` must be scalar losses when `grad_tensors` is None, but element "
                    f"{i} has shape {list(loss.shape)}."
                )
    params = resolve_params(loss_list, feature_list, tasks_params, shared_params)
    task_grads, jac_features = task_and_feature_gradients(
        loss_list, feature_list, multipliers, params.tasks
    )
    _, matrix = to_matrix(jac_features, len(loss_list))
    with torch.no_grad():
        update, weights, _, _ = aggregate_matrix(aggregator, matrix, losses=losses)
    check_update(update, matrix, aggregator)
    feature_update = [
        part.to(f.dtype)
        for part, f in zip(split_update(update, feature_list), feature_list, strict=True)
    ]
    shared_grads = (
        pull_back(feature_list, params.shared, feature_update, retain_graph)
        if params.shared
        else []
    )
    for own_params, grads in zip(params.tasks, task_grads, strict=True):
        used = [(p, g) for p, g in zip(own_params, grads, strict=True) if g is not None]
        accumulate_grads([p for p, _ in used], [g for _, g in used])
    accumulate_grads(params.shared, shared_grads)
    return weights
