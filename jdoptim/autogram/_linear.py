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

    which is ``(δ δᵀ) ⊙ (x xᵀ)`` when ``S = 1``. For large ``S`` the per-row gradients are
    cheaper and are formed instead. The bias adds ``(Σ_s δ)(Σ_s δ)ᵀ``. Computed in float32 for
    half-precision calls (under autocast, with ``x`` rounded as the layer used it).
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
        elif (size * positions) ** 2 <= size * in_features * out_features:
            x_kernel = torch.einsum("bsi,cri->bscr", x, x)
            delta_kernel = torch.einsum("tbso,ucro->tbsucr", delta, delta)
            gramian += torch.einsum("tbsucr,bscr->tbuc", delta_kernel, x_kernel).reshape(size, size)
        else:
            weight_jacobian = torch.einsum("tbso,bsi->tboi", delta, x).reshape(size, -1)
            gramian += weight_jacobian @ weight_jacobian.T
    if "bias" in names:
        bias_jacobian = delta.sum(dim=2).reshape(size, out_features)
        gramian += bias_jacobian @ bias_jacobian.T
    return gramian
