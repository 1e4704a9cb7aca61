"""Gramian of a call of ``nn.Linear``, from its input and output gradients only."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._autocast import as_computed


def is_plain_linear(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` whose forward is not overridden."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def linear_gramian(
    module: nn.Module,
    x: Tensor,
    delta: Tensor,
    names: set[str],
    batched: bool,
) -> Tensor:
    r"""Gramian of a call ``y = x Wᵀ + b`` of :class:`torch.nn.Linear`, without its Jacobian.

    With ``x`` ``[B, S, in]`` and ``δ`` ``[T, B, S, out]`` (``S`` gathers the extra dimensions),
    the gradient of row ``(t, b)`` w.r.t. ``W`` is ``Σ_s δ[t, b, s]ᵀ x[b, s]``, so

    .. math:: G_W[(t, b), (u, c)] = \sum_{s, r} \langle δ_{tbs}, δ_{ucr} \rangle
        \langle x_{bs}, x_{cr} \rangle,

    which is ``(δ δᵀ) ⊙ (x xᵀ)`` when ``S = 1``. The per-row gradients are formed instead when
    they take fewer products (long sequences, narrow layers), by blocks of output features so
    that they take no more memory than the call's input or output gradient. The bias adds
    ``(Σ_s δ)(Σ_s δ)ᵀ``. Computed in float32 for half-precision calls (under autocast, with
    ``x`` rounded as the layer used it).
    """
    x, delta = as_computed(x, delta)
    in_features = x.shape[-1]
    rows = delta.shape[0]
    samples = x.shape[0] if batched else 1
    x = x.reshape(samples, -1, in_features)
    positions = x.shape[1]
    delta = delta.reshape(rows, samples, positions, -1)
    out_features = delta.shape[-1]
    size = rows * samples
    gramian: Tensor | None = None
    if "bias" in names:
        bias_jacobian = delta.sum(dim=2).reshape(size, out_features)
        gramian = bias_jacobian @ bias_jacobian.T
    if "weight" in names:
        if positions == 1:
            flat_delta = delta.reshape(size, out_features)
            flat_x = x.reshape(samples, in_features)
            weight = (flat_delta @ flat_delta.T) * (flat_x @ flat_x.T).repeat(rows, rows)
            gramian = weight if gramian is None else gramian.add_(weight)
        elif _kernel_is_cheaper(rows, samples, positions, in_features, out_features):
            flat_x = x.reshape(samples * positions, in_features)
            flat_delta = delta.reshape(size * positions, out_features)
            x_kernel = (flat_x @ flat_x.T).reshape(samples, positions, samples, positions)
            x_kernel = x_kernel.repeat(rows, 1, rows, 1)
            delta_kernel = (flat_delta @ flat_delta.T).reshape(size, positions, size, positions)
            weight = (delta_kernel * x_kernel).sum(dim=(1, 3))
            gramian = weight if gramian is None else gramian.add_(weight)
        else:
            gramian = _add_per_row_gramian(x, delta, gramian)
    return delta.new_zeros(size, size) if gramian is None else gramian


def _add_per_row_gramian(x: Tensor, delta: Tensor, gramian: Tensor | None) -> Tensor:
    """``gramian`` plus the Gramian of the per-row gradients ``Σ_s δ[t, b, s]ᵀ x[b, s]``.

    One batched product per sample (``x`` ``[B, S, in]``, ``δ`` ``[T, B, S, out]``), by blocks
    of output features no larger than the call's own tensors, written into one buffer and
    multiplied into the Gramian in place (no temporary per block). With several rows the
    products are taken in the order ``(b, t)`` of the rows, and the result reordered once.
    """
    rows, samples, positions, out_features = delta.shape
    in_features = x.shape[-1]
    size = rows * samples
    budget = max(x.numel(), delta.numel())
    block = max(1, min(out_features, budget // (size * in_features)))
    storage = x.new_empty(size * block * in_features)
    if rows == 1:
        # [B, out, S], a view: each block is a slice of it.
        by_sample = delta.reshape(samples, positions, out_features).transpose(1, 2)
    else:
        by_sample = delta.permute(1, 0, 3, 2)  # [B, T, out, S]
    target = gramian if rows == 1 else None
    for start in range(0, out_features, block):
        width = min(block, out_features - start)
        if rows == 1:
            part = by_sample[:, start : start + width]
        else:  # a copy of the block
            part = by_sample[:, :, start : start + width].reshape(samples, rows * width, positions)
        jacobian = storage[: size * width * in_features]
        torch.bmm(part, x, out=jacobian.view(samples, rows * width, in_features))
        matrix = jacobian.view(size, width * in_features)  # rows (b, t)
        target = matrix @ matrix.T if target is None else target.addmm_(matrix, matrix.T)
    assert target is not None
    if rows == 1:
        return target
    reordered = target.view(samples, rows, samples, rows).permute(1, 0, 3, 2).reshape(size, size)
    return reordered if gramian is None else gramian.add_(reordered)


def _kernel_is_cheaper(
    rows: int, samples: int, positions: int, in_features: int, out_features: int
) -> bool:
    """Whether the kernel over pairs of positions costs fewer products than per-row gradients.

    The kernel: ``(B S)² in + (T B S)² out``; per-row gradients: ``T B S in out`` for the
    outer products and ``(T B)² in out`` for their Gramian.
    """
    pairs = samples * positions
    kernel = pairs * pairs * (in_features + rows * rows * out_features)
    size = rows * samples
    per_row = size * in_features * out_features * (positions + size)
    return kernel <= per_row
