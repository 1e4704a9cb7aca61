"""Gramian of the affine parameters of ``nn.LayerNorm`` and ``nn.RMSNorm``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._autocast import accumulation_dtype

_RMS_NORM = getattr(nn, "RMSNorm", None)  # torch >= 2.4


def is_plain_normalization(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.LayerNorm`` or ``nn.RMSNorm`` with its own forward."""
    if isinstance(module, nn.LayerNorm):
        return type(module).forward is nn.LayerNorm.forward
    return (
        _RMS_NORM is not None
        and isinstance(module, _RMS_NORM)
        and type(module).forward is _RMS_NORM.forward
    )


def normalization_gramian(
    module: nn.Module, x: Tensor, delta: Tensor, names: set[str], batched: bool
) -> Tensor:
    r"""Gramian of the element-wise affine parameters of a layer or RMS normalisation.

    The output is ``x̂ ⊙ γ + β`` with ``x̂`` the input normalised over its last dimensions, so
    the gradient of row ``(t, b)`` w.r.t. ``γ`` is ``Σ_s δ[t, b, s] ⊙ x̂[b, s]`` and w.r.t.
    ``β`` is ``Σ_s δ[t, b, s]`` (``s`` over the positions of a sample). ``x̂`` is recomputed
    from the recorded input, in float32 or wider.
    """
    dtype = accumulation_dtype(delta.dtype)
    shape = tuple(module.normalized_shape)  # type: ignore[arg-type]
    features = 1
    for size in shape:
        features *= size
    rows = delta.shape[0]
    samples = x.shape[0] if batched else 1
    delta = delta.to(dtype).reshape(rows, samples, -1, features)
    size = rows * samples
    # The per-row gradients of the weight and of the bias side by side: one product.
    jacobians = []
    if "weight" in names:
        eps: float | None = getattr(module, "eps", None)
        if eps is None:  # RMSNorm's default: the machine epsilon of its input
            eps = torch.finfo(x.dtype).eps
        if isinstance(module, nn.LayerNorm):
            normalized = F.layer_norm(x.to(dtype), shape, None, None, eps)
        else:
            normalized = F.rms_norm(x.to(dtype), shape, None, eps)
        normalized = normalized.reshape(samples, -1, features)
        # A product and a sum: einsum would make it B·n matrix products of one column.
        jacobians.append((delta * normalized).sum(dim=2).reshape(size, -1))
    if "bias" in names:
        jacobians.append(delta.sum(dim=2).reshape(size, features))
    if not jacobians:
        return delta.new_zeros(size, size)
    matrix = jacobians[0] if len(jacobians) == 1 else torch.cat(jacobians, dim=1)
    return matrix @ matrix.T
