"""``jac_to_grad``: aggregates the ``.jac`` fields of some tensors into their ``.grad``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..aggregation._bases import Aggregator
from ._aggregate import aggregate_matrix
from ._checks import as_distinct_tensors, check_aggregator
from ._jac_fields import accumulate_grads, delete_jac, get_jac, set_jac
from ._matrix import split_update, to_matrix


def jac_to_grad(
    tensors: Tensor | Iterable[Tensor],
    /,
    aggregator: Aggregator,
    *,
    retain_jac: bool = False,
    losses: Tensor | None = None,
) -> Tensor | None:
    r"""Aggregates the ``.jac`` fields of ``tensors`` and accumulates the result into ``.grad``.

    The Jacobians ``t.jac`` of shape ``[m, *t.shape]`` are flattened and concatenated, in the
    order of ``tensors``, into one matrix :math:`J` of shape ``[m, N]`` (``N`` the total number
    of elements); ``aggregator`` turns it into a vector :math:`A(J)` of shape ``[N]``, which is
    split back and added to each tensor's ``.grad`` (created when absent, like
    :func:`torch.autograd.backward`). The ``.jac`` fields are then deleted, unless
    ``retain_jac``.

    Aggregating several groups of parameters separately (e.g. with different aggregators) takes
    one call per group. ``.grad`` is written only once the aggregation has succeeded: if it
    raises, every ``.grad`` and ``.jac`` is left as it was.

    The peak memory stays near one copy of the Jacobian: when the ``.jac`` fields are consecutive
    column blocks of one matrix (as :func:`backward` with a ``parallel_chunk_size`` smaller than
    ``m`` produces them), that matrix is aggregated without any copy; otherwise each ``.jac`` is
    replaced by a view into :math:`J` as soon as it is copied there, which frees the original
    unless something else references it. With ``retain_jac=True`` the ``.jac`` fields stay such
    views.

    Args:
        tensors: the tensor or iterable of tensors (e.g. ``model.parameters()``) whose ``.jac``
            is aggregated; every one must have a ``.jac`` with the same number ``m`` of rows.
        aggregator: the :class:`~jdoptim.aggregation.Aggregator` applied to :math:`J`. Its
            forward hooks fire.
        retain_jac: keep the ``.jac`` fields instead of deleting them.
        losses: the ``[m]`` loss values, for aggregators that read them (``requires_losses``,
            e.g. :class:`~jdoptim.aggregation.DBMTL`); detached. Ignored by the others.

    Returns:
        The weights ``[m]`` the aggregator gave the rows when it knows them (a
        :class:`~jdoptim.aggregation.GramianWeightedAggregator` or
        :class:`~jdoptim.aggregation.WeightedAggregator`), else ``None``.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import Mean
        >>> from jdoptim.autojac import backward, jac_to_grad
        >>> param = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> backward(torch.stack([param.pow(2).sum(), param.prod()]))
        >>> jac_to_grad([param], Mean())
        tensor([0.5000, 0.5000])
        >>> param.grad
        tensor([2.0000, 2.5000])
        >>> hasattr(param, "jac")
        False
    """
    tensor_list = as_distinct_tensors(tensors, "tensors")
    check_aggregator(aggregator)
    jacobians = _checked_jacobians(tensor_list)
    m = jacobians[0].shape[0]
    # A .jac copied into the matrix becomes a view of it, so the original is freed right away:
    # the peak memory stays near one copy of the Jacobian, and nothing is lost on failure.
    _, matrix = to_matrix(jacobians, m, on_copy=lambda i, view: set_jac(tensor_list[i], view))
    del jacobians
    with torch.no_grad():
        update, weights, _, _ = aggregate_matrix(aggregator, matrix, losses=losses)
    check_update(update, matrix, aggregator)
    gradients = [
        part.to(dtype=tensor.dtype, copy=True)
        for part, tensor in zip(split_update(update, tensor_list), tensor_list, strict=True)
    ]
    accumulate_grads(tensor_list, gradients)
    if not retain_jac:
        for tensor in tensor_list:
            delete_jac(tensor)
    return weights


def check_update(update: Tensor, matrix: Tensor, aggregator: Aggregator) -> None:
    """Checks that ``aggregator`` returned a vector with one entry per column of ``matrix``."""
    if update.shape != (matrix.shape[1],):
        raise ValueError(
            f"`aggregator` must return a vector of shape [{matrix.shape[1]}], but "
            f"{aggregator!r} returned shape {list(update.shape)}."
        )


def _checked_jacobians(tensors: list[Tensor]) -> list[Tensor]:
    """The ``.jac`` of every tensor, checked to exist with shape ``[m, *t.shape]`` and one m."""
    jacobians: list[Tensor] = []
    for i, tensor in enumerate(tensors):
        jacobian = get_jac(tensor)
        if jacobian is None:
            raise ValueError(
                f"`tensors` must all have a `.jac` field (call `backward` or `mtl_backward` "
                f"first), but element {i} of shape {list(tensor.shape)} has none."
            )
        if jacobian.dim() < 1 or jacobian.shape[1:] != tensor.shape:
            raise ValueError(
                f"`tensors` must have a `.jac` of shape [m, *t.shape], but element {i} of shape "
                f"{list(tensor.shape)} has a `.jac` of shape {list(jacobian.shape)}."
            )
        first = jacobians[0] if jacobians else jacobian
        if jacobian.shape[0] != first.shape[0]:
            raise ValueError(
                f"`tensors` must have `.jac` fields with the same number of rows m, but element "
                f"{i} has {jacobian.shape[0]} rows and element 0 has {first.shape[0]}."
            )
        if jacobian.dtype != first.dtype or jacobian.device != first.device:
            raise ValueError(
                f"`tensors` must have `.jac` fields of one dtype and device, but element {i} has "
                f"{jacobian.dtype} on {jacobian.device} and element 0 has {first.dtype} on "
                f"{first.device}."
            )
        jacobians.append(jacobian)
    return jacobians
