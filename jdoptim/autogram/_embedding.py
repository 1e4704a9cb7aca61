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

    The cheaper of two forms is used: that kernel over the ``(T B S)²`` pairs of positions, or
    the per-row gradients restricted to the tokens of the call (``T B × U × d`` for ``U``
    distinct tokens). Computed in float32 or wider.
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
    dim = delta.shape[-1]
    size = rows * samples
    flat = delta.reshape(size, positions, dim)
    ids = tokens.repeat(rows, 1)  # row t * B + b reads the tokens of sample b
    distinct, inverse = torch.unique(ids, return_inverse=True)
    if (size * positions) ** 2 <= size * distinct.numel() * dim:
        pairs = flat.reshape(size * positions, dim)
        same = (ids.reshape(-1, 1) == ids.reshape(1, -1)).to(dtype)
        kernel = (pairs @ pairs.T) * same
        return kernel.reshape(size, positions, size, positions).sum(dim=(1, 3))
    jacobian = flat.new_zeros(size, distinct.numel(), dim)
    jacobian.scatter_add_(1, inverse.unsqueeze(-1).expand(-1, -1, dim), flat)
    matrix = jacobian.reshape(size, -1)
    return matrix @ matrix.T
