"""Gramian of a call of ``nn.Embedding``: per-sample gradients touch the rows of its tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._autocast import accumulation_dtype


def is_plain_embedding(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Embedding`` whose gradient is a plain scatter.

    ``max_norm`` rewrites the weight in the forward: it is left to the replay.
    """
    return (
        isinstance(module, nn.Embedding)
        and type(module).forward is nn.Embedding.forward
        and module.max_norm is None
    )


def embedding_gramian(module: nn.Embedding, x: Tensor, delta: Tensor, batched: bool) -> Tensor:
    r"""Gramian of a call ``y = W[x]`` of :class:`torch.nn.Embedding`, without its Jacobian.

    With tokens ``x`` ``[B, S]`` and ``δ`` ``[T, B, S, d]`` (``S`` gathers the extra
    dimensions), the gradient of row ``(t, b)`` w.r.t. ``W`` is ``Σ_s δ[t, b, s]`` added to the
    row ``x[b, s]`` (nothing for the padding index; divided by the number of occurrences of the
    token in the call with ``scale_grad_by_freq``), so

    .. math:: G[(t, b), (u, c)] = \sum_{s, r} [x_{bs} = x_{cr}] \langle δ_{tbs}, δ_{ucr} \rangle.

    The form with fewer products is used: that kernel over the ``(T B S)²`` pairs of positions
    (``(T B S)² d``), or the per-row gradients restricted to the tokens of the call
    (``T B × U × d`` for ``U`` distinct tokens, whose Gramian takes ``(T B)² U d``). Computed in
    float32 or wider.
    """
    flat, ids = embedding_rows(module, x, delta, batched)
    size, positions, dim = flat.shape
    dtype = flat.dtype
    distinct, inverse = torch.unique(ids, return_inverse=True)
    pairs_cost = (size * positions) ** 2 * (dim + 1)
    if pairs_cost <= size * dim * (size * distinct.numel() + positions):
        pairs = flat.reshape(size * positions, dim)
        same = (ids.reshape(-1, 1) == ids.reshape(1, -1)).to(dtype)
        kernel = (pairs @ pairs.T) * same
        return kernel.reshape(size, positions, size, positions).sum(dim=(1, 3))
    jacobian = flat.new_zeros(size, distinct.numel(), dim)
    jacobian.scatter_add_(1, inverse.unsqueeze(-1).expand(-1, -1, dim), flat)
    matrix = jacobian.reshape(size, -1)
    return matrix @ matrix.T


def embedding_rows(
    module: nn.Embedding, x: Tensor, delta: Tensor, batched: bool
) -> tuple[Tensor, Tensor]:
    """The gradients added to the table by each position of each row, and their tokens.

    Returns ``flat`` ``[T B, S, d]`` (``δ`` in float32 or wider, zero at the padding index,
    divided by the token counts with ``scale_grad_by_freq``) and ``ids`` ``[T B, S]``: the
    gradient of row ``r`` w.r.t. the table is ``flat[r, s]`` added to row ``ids[r, s]``, summed
    over ``s``.
    """
    dtype = accumulation_dtype(delta.dtype)
    rows = delta.shape[0]
    samples = x.shape[0] if batched else 1
    tokens = x.reshape(samples, -1)
    positions = tokens.shape[1]
    delta = delta.to(dtype).reshape(rows, samples, positions, -1)
    if module.scale_grad_by_freq:
        # Each occurrence counts 1 / (occurrences of its token in the whole call): the counts
        # mix the samples, so the per-sample replay could not reproduce them.
        _, where, counts = torch.unique(tokens, return_inverse=True, return_counts=True)
        delta = delta / counts[where].to(dtype).unsqueeze(-1)
    if module.padding_idx is not None:
        delta = delta * (tokens != module.padding_idx).unsqueeze(-1).to(dtype)
    flat = delta.reshape(rows * samples, positions, -1)
    # Row t * B + b reads the tokens of sample b (no copy for a single row).
    return flat, tokens if rows == 1 else tokens.repeat(rows, 1)


def scatter_rows(flat: Tensor, ids: Tensor, table_rows: Tensor) -> Tensor:
    """The per-row gradients ``[T B, U, d]`` restricted to ``table_rows`` (sorted, ``[U]``):
    the positions whose token is not among them are left out."""
    count = table_rows.numel()
    # Contiguous: torch warns about (and copies) other layouts, e.g. the tokens of one row.
    where = torch.searchsorted(table_rows, ids.contiguous()).clamp(max=count - 1)
    inside = (table_rows[where] == ids).unsqueeze(-1).to(flat.dtype)
    jacobian = flat.new_zeros(flat.shape[0], count, flat.shape[2])
    jacobian.scatter_add_(1, where.unsqueeze(-1).expand(-1, -1, flat.shape[2]), flat * inside)
    return jacobian
