"""The ``[m, N]`` matrix of the Jacobians of several tensors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._jacobian import storage_key


def as_one_matrix(jacobians: Sequence[Tensor]) -> Tensor | None:
    """The ``[m, N]`` matrix of which ``jacobians`` are consecutive column blocks, if there is one.

    This is the layout produced by ``compute_jacobians`` with ``shared_buffer`` (and by
    ``jac_to_grad(retain_jac=True)``): the matrix is then a view, with no copy. Returns None for
    any other layout.
    """
    m = jacobians[0].shape[0]
    sizes = [jacobian[0].numel() if m > 0 else 0 for jacobian in jacobians]
    total = sum(sizes)
    if m == 0 or total == 0:
        return None
    first = jacobians[0]
    storage = storage_key(first)
    offset = first.storage_offset()
    for jacobian, size in zip(jacobians, sizes, strict=True):
        if (
            storage_key(jacobian) != storage
            or jacobian.storage_offset() != offset
            or (m > 1 and jacobian.stride(0) != total)
            or not jacobian[0].is_contiguous()
        ):
            return None
        offset += size
    return first.as_strided((m, total), (total, 1), first.storage_offset())


def to_matrix(
    jacobians: list[Tensor],
    m: int,
    *,
    extra: Sequence[Tensor] = (),
    on_copy: Callable[[int, Tensor], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """One flat buffer holding the ``[m, N]`` matrix of ``jacobians`` (``[m, *shape]`` each).

    Returns ``(buffer, matrix)``: ``matrix`` is a view of the start of ``buffer`` whose
    consecutive column blocks are the flattened Jacobians; ``buffer`` ends with one element per
    element of the tensors ``extra``, for the caller to fill (so that everything to reduce across
    processes is in one tensor); their dtypes take part in the promotion.

    Without ``extra``, when the Jacobians already are consecutive column blocks of one matrix
    (``compute_jacobians`` with ``shared_buffer``) or there is one contiguous Jacobian, that
    matrix is used without a copy. Otherwise the Jacobians are copied one by one into a new
    buffer, and each entry of ``jacobians`` is replaced by its view in the matrix as soon as it is
    copied (``on_copy(i, view)`` lets the caller drop its own references too), so that the peak
    memory stays near one copy.
    """
    sizes = [math.prod(jacobian.shape[1:]) for jacobian in jacobians]
    total = sum(sizes)
    if jacobians and not extra:
        matrix = as_one_matrix(jacobians)
        if matrix is not None and matrix.shape == (m, total) and matrix.is_contiguous():
            return matrix.view(-1), matrix
        if len(jacobians) == 1 and jacobians[0].is_contiguous():
            matrix = jacobians[0].view(m, total)
            return matrix.view(-1), matrix
    everything = [*jacobians, *extra]
    if not everything:
        buffer = torch.empty(0)
        return buffer, buffer.view(m, 0)
    dtype = everything[0].dtype
    for tensor in everything[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    size = m * total + sum(tensor.numel() for tensor in extra)
    buffer = torch.empty(size, dtype=dtype, device=everything[0].device)
    matrix = buffer[: m * total].view(m, total)
    offset = 0
    for i, size in enumerate(sizes):
        columns = matrix[:, offset : offset + size]
        columns.copy_(jacobians[i].reshape(m, size))
        jacobians[i] = columns.view(jacobians[i].shape)
        if on_copy is not None:
            on_copy(i, jacobians[i])
        offset += size
    return buffer, matrix


def column_blocks(matrix: Tensor, widths: Sequence[int]) -> list[Tensor]:
    """The consecutive column blocks of ``matrix`` of the given widths (views)."""
    blocks = []
    start = 0
    for width in widths:
        blocks.append(matrix[:, start : start + width])
        start += width
    return blocks


def split_update(update: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    """``update`` ``[N]`` cut into one view per tensor, of that tensor's shape."""
    parts = []
    offset = 0
    for tensor in tensors:
        size = tensor.numel()
        parts.append(update[offset : offset + size].view(tensor.shape))
        offset += size
    return parts
