"""``mtl_backward``: task gradients into ``.grad``, the shared Jacobian into ``.jac``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ._engine import (
    accumulate_grads,
    accumulate_jacs,
    as_tensors,
    check_accumulable,
    check_jac_rows,
    check_multipliers,
    check_no_duplicates,
    check_outputs,
    check_parallel_chunk_size,
    check_require_grad,
    compute_jacobians,
    get_jac,
    leaves_in_order_of_first_use,
    own,
    storage_keys,
)


def mtl_backward(
    tensors: Tensor | Sequence[Tensor],
    /,
    features: Tensor | Sequence[Tensor],
    *,
    grad_tensors: Tensor | Sequence[Tensor] | None = None,
    tasks_params: Iterable[Iterable[Tensor]] | None = None,
    shared_params: Iterable[Tensor] | None = None,
    retain_graph: bool = False,
    parallel_chunk_size: int | None = None,
) -> None:
    r"""Multi-task backward: task gradients into ``.grad``, the shared Jacobian into ``.jac``.

    For a model made of a shared trunk computing ``features`` and one head per task computing the
    task loss :math:`\ell_i` from them, this accumulates

    * the ordinary gradient :math:`\nabla_{\theta_i} \ell_i` into the ``.grad`` of each task's
      own parameters :math:`\theta_i` (created when absent, added to otherwise), and
    * the Jacobian of the losses with respect to the shared parameters :math:`\theta_s`, one row
      per task (shape ``[T, *p.shape]``), into their ``.jac`` (accumulated like ``.grad``).

    The Jacobian is computed the cheap way, through the features: one backward pass per task
    through its head gives :math:`g_i = \partial \ell_i / \partial z` for the features :math:`z`,
    then row :math:`i` of :math:`\partial \ell / \partial \theta_s` is :math:`g_i^\top \partial z
    / \partial \theta_s`, all rows in vectorised backward passes through the trunk (see
    :func:`backward`). Every dependence of the losses on the shared parameters must go through
    ``features``; otherwise a ``ValueError`` is raised (the result would silently miss it).

    Use :func:`jac_to_grad` on the shared parameters afterwards to aggregate the ``.jac`` into
    ``.grad``.

    Args:
        tensors: the task losses, one per task, in task order. Each is a scalar, or a tensor of
            any shape when ``grad_tensors`` is given.
        features: the shared representation(s) from which the heads compute the losses.
        grad_tensors: one tensor per loss, of the loss's shape, weighting its elements (as in
            :func:`torch.autograd.backward`); ``None`` requires scalar losses.
        tasks_params: one iterable of parameters per task. Defaults, for each task, to the
            leaves requiring grad used to compute its loss other than through the features.
        shared_params: the parameters receiving the Jacobian. Defaults to the leaves requiring
            grad used to compute ``features``, in order of first use.
        retain_graph: if ``False``, the graph is freed once the last row of the Jacobian is
            computed.
        parallel_chunk_size: rows of the Jacobian computed per vectorised backward pass (see
            :func:`backward`); ``1`` never uses ``vmap``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from jdoptim.autojac import mtl_backward
        >>> _ = torch.manual_seed(0)
        >>> trunk, head1, head2 = nn.Linear(3, 2), nn.Linear(2, 1), nn.Linear(2, 1)
        >>> features = trunk(torch.randn(4, 3))
        >>> losses = [head1(features).square().mean(), head2(features).abs().mean()]
        >>> mtl_backward(losses, features)
        >>> trunk.weight.jac.shape, head1.weight.grad.shape, hasattr(head2.weight, "jac")
        (torch.Size([2, 2, 3]), torch.Size([1, 2]), False)
    """
    losses = as_tensors(tensors, "tensors")
    check_outputs(losses, "tensors")
    feature_list = as_tensors(features, "features")
    check_require_grad(feature_list, "features")
    check_no_duplicates(feature_list, "features")
    multipliers = check_multipliers(grad_tensors, losses, "grad_tensors", leading_dim=False)
    if multipliers is None:
        for i, loss in enumerate(losses):
            if loss.numel() != 1:
                raise ValueError(
                    "`tensors` must be scalar losses when `grad_tensors` is None, but element "
                    f"{i} has shape {list(loss.shape)}."
                )
    check_parallel_chunk_size(parallel_chunk_size)

    direct_leaves: list[list[Tensor]] = []
    reaches_features = False
    for loss in losses:
        leaves, reached = leaves_in_order_of_first_use([loss], stop_at=feature_list)
        direct_leaves.append(leaves)
        reaches_features = reaches_features or any(reached)
    if not reaches_features:
        raise ValueError(
            "`features` must be used to compute the losses `tensors`, but no loss depends on "
            "any of them."
        )

    if shared_params is None:
        shared, _ = leaves_in_order_of_first_use(feature_list)
    else:
        shared = as_tensors(shared_params, "shared_params")
        check_accumulable(shared, "shared_params")
        check_no_duplicates(shared, "shared_params")
    shared_ids = {id(param) for param in shared}
    for i, leaves in enumerate(direct_leaves):
        if any(id(leaf) in shared_ids for leaf in leaves):
            raise ValueError(
                f"`features` must carry every dependence of the losses on the shared parameters, "
                f"but loss {i} of `tensors` uses a shared parameter other than through `features`."
            )

    if tasks_params is None:
        tasks = [
            [leaf for leaf in leaves if id(leaf) not in shared_ids] for leaves in direct_leaves
        ]
    else:
        if isinstance(tasks_params, Tensor) or not isinstance(tasks_params, Iterable):
            raise TypeError(
                "`tasks_params` must be a sequence of iterables of parameters, one per loss, but "
                f"got {type(tasks_params).__name__}."
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
    check_jac_rows(shared, len(losses), "shared_params")

    protected = storage_keys(multipliers or [])
    task_grads: list[list[Tensor | None]] = []
    feature_grads: list[list[Tensor]] = [[] for _ in feature_list]
    for i, (loss, params) in enumerate(zip(losses, tasks, strict=True)):
        grads: Sequence[Tensor | None] = torch.autograd.grad(
            loss,
            [*params, *feature_list],
            grad_outputs=None if multipliers is None else multipliers[i],
            retain_graph=True,
            allow_unused=True,
        )
        task_grads.append([None if g is None else own(g, protected) for g in grads[: len(params)]])
        for grads_of_feature, feature, grad in zip(
            feature_grads, feature_list, grads[len(params) :], strict=True
        ):
            grads_of_feature.append(torch.zeros_like(feature) if grad is None else grad)
    jac_features = [torch.stack(grads) for grads in feature_grads]
    del feature_grads

    jacobians = (
        compute_jacobians(
            feature_list,
            shared,
            jac_features,
            retain_graph,
            parallel_chunk_size,
            shared_buffer=all(get_jac(param) is None for param in shared),
        )
        if shared
        else []
    )
    del jac_features
    for params, grads in zip(tasks, task_grads, strict=True):
        used = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        accumulate_grads([p for p, _ in used], [g for _, g in used])
    accumulate_jacs(shared, jacobians)
