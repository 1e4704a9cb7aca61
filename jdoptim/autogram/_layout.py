"""From the ``[R, R]`` Gramian over rows ``(t, b)`` to the generalized Gramian of the output."""

from __future__ import annotations

from torch import Tensor

from .._generalized_gramian import reversal


def to_generalized_gramian(
    gramian: Tensor, shape: tuple[int, ...], batch_dim: int | None
) -> Tensor:
    """Reshapes and permutes ``gramian`` into the shape ``[*shape, *reversed(shape)]``.

    Row ``t * B + b`` of ``gramian`` is the loss of sample ``b`` (along ``batch_dim``; ``B = 1``
    without one) at position ``t`` of the other dimensions, in row-major order.
    """
    k = len(shape)
    if batch_dim is None:
        return gramian.reshape(shape + shape).permute(reversal(k))
    others = [d for d in range(k) if d != batch_dim]
    grouped = gramian.reshape(
        [shape[d] for d in others]
        + [shape[batch_dim]]
        + [shape[d] for d in others]
        + [shape[batch_dim]]
    )
    half = len(others) + 1

    def position(dim: int) -> int:
        return len(others) if dim == batch_dim else others.index(dim)

    order = [position(d) for d in range(k)] + [half + position(d) for d in reversed(range(k))]
    return grouped.permute(order)
