"""The layout of a generalized Gramian: ``[*shape, *reversed(shape)]`` for losses of ``shape``.

Entry ``(i1, …, ik, jk, …, j1)`` is the inner product of the gradients of losses ``(i1, …, ik)``
and ``(j1, …, jk)``: the trailing dimensions come in reverse order, so that contracting the last
dimensions with a tensor of the losses' shape is a matrix product. Reversing them turns the
tensor into the square ``[M, M]`` Gramian of the flattened losses, and back.
"""

from __future__ import annotations

from torch import Tensor


def reversal(k: int) -> list[int]:
    """The permutation of ``2k`` dimensions that reverses the last ``k`` (its own inverse)."""
    return list(range(k)) + list(range(2 * k - 1, k - 1, -1))


def to_square(generalized_gramian: Tensor) -> Tensor:
    """The ``[M, M]`` Gramian of the flattened losses, from a generalized Gramian."""
    k = generalized_gramian.dim() // 2
    size = generalized_gramian.shape[:k].numel()
    return generalized_gramian.permute(reversal(k)).reshape(size, size)
