"""``mtl_backward``: task gradients into ``.grad``, the shared Jacobian into ``.jac``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor

from ._checks import (
    as_tensors,
    check_multipliers,
    check_no_duplicates,
    check_outputs,
    check_parallel_chunk_size,
    check_require_grad,
)
from ._chunk_size import ChunkSize
from ._jac_fields import accumulate_grads, accumulate_jacs, check_jac_rows, get_jac
from ._multi_task import compute_multi_task, resolve_params


def mtl_backward(
    tensors: Tensor | Sequence[Tensor],
    /,
    features: Tensor | Sequence[Tensor],
    *,
    grad_tensors: Tensor | Sequence[Tensor] | None = None,
    tasks_params: Iterable[Iterable[Tensor]] | None = None,
    shared_params: Iterable[Tensor] | None = None,
    retain_graph: bool = False,
    parallel_chunk_size: ChunkSize = "auto",
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
        parallel_chunk_size: rows of the Jacobian computed per vectorised backward pass
            through the trunk (see :func:`backward`); ``1`` never uses ``vmap``; ``"auto"`` (the
            default) chooses from the trunk's graph.

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

    params = resolve_params(losses, feature_list, tasks_params, shared_params)
    check_jac_rows(params.shared, len(losses), "shared_params")
    task_grads, jacobians = compute_multi_task(
        losses,
        feature_list,
        multipliers,
        params,
        retain_graph,
        parallel_chunk_size,
        shared_buffer=all(get_jac(param) is None for param in params.shared),
    )
    for own_params, grads in zip(params.tasks, task_grads, strict=True):
        used = [(p, g) for p, g in zip(own_params, grads, strict=True) if g is not None]
        accumulate_grads([p for p, _ in used], [g for _, g in used])
    accumulate_jacs(params.shared, jacobians)
