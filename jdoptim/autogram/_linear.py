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
    delta = delta.reshape(rows, samples, x.shape[1], -1)
    out_features = delta.shape[-1]
    size = rows * samples
    positions = x.shape[1]
    gramian = delta.new_zeros(size, size)
    if "weight" in names:
        if positions == 1:
            flat_delta = delta.reshape(size, out_features)
            flat_x = x.reshape(samples, in_features)
            gramian += (flat_delta @ flat_delta.T) * (flat_x @ flat_x.T).repeat(rows, rows)
        elif _kernel_is_cheaper(rows, samples, positions, in_features, out_features):
            flat_x = x.reshape(samples * positions, in_features)
            flat_delta = delta.reshape(size * positions, out_features)
            x_kernel = (flat_x @ flat_x.T).reshape(samples, positions, samples, positions)
            x_kernel = x_kernel.repeat(rows, 1, rows, 1)
            delta_kernel = (flat_delta @ flat_delta.T).reshape(size, positions, size, positions)
            gramian += (delta_kernel * x_kernel).sum(dim=(1, 3))
        else:
            # Per-row gradients Σ_s δ[t, b, s]ᵀ x[b, s], one batched product per sample, by
            # blocks of output features no larger than the call's own tensors, written into
            # one buffer and added to the Gramian in place (no temporary per block). The
            # products are taken in the order (b, t) of the rows, then reordered once.
            by_sample = delta.permute(1, 0, 3, 2)  # [B, T, out, S]
            budget = max(x.numel(), delta.numel())
            block = max(1, min(out_features, budget // (size * in_features)))
            storage = x.new_empty(size * block * in_features)
            by_sample_gramian = gramian if rows == 1 else delta.new_zeros(size, size)
            for start in range(0, out_features, block):
                part = by_sample[:, :, start : start + block]
                width = part.shape[2]
                part = part.reshape(samples, rows * width, positions)
                weight_jacobian = storage[: size * width * in_features]
                torch.bmm(part, x, out=weight_jacobian.view(samples, rows * width, in_features))
                matrix = weight_jacobian.view(size, width * in_features)  # rows (b, t)
                by_sample_gramian.addmm_(matrix, matrix.T)
            if rows > 1:
                reordered = by_sample_gramian.view(samples, rows, samples, rows)
                gramian += reordered.permute(1, 0, 3, 2).reshape(size, size)
    if "bias" in names:
        bias_jacobian = delta.sum(dim=2).reshape(size, out_features)
        gramian += bias_jacobian @ bias_jacobian.T
    return gramian


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
