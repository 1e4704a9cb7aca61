"""Gramian of a call of a convolution, from per-sample weight gradients formed as a convolution."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._autocast import as_computed

_CONVOLUTIONS = {
    nn.Conv1d: (1, F.conv1d),
    nn.Conv2d: (2, F.conv2d),
    nn.Conv3d: (3, F.conv3d),
}


def is_plain_convolution_module(module: nn.Module) -> bool:
    """Whether ``module`` is a zero-padded, ungrouped ``nn.ConvNd`` with its own forward."""
    for cls in _CONVOLUTIONS:
        if isinstance(module, cls) and type(module).forward is cls.forward:
            return (
                module.groups == 1
                and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)
            )
    return False


def is_plain_convolution(module: nn.Module, x: Tensor) -> bool:
    """Whether ``module(x)`` is a batched call of a :func:`is_plain_convolution_module`."""
    if not is_plain_convolution_module(module):
        return False
    dims = next(dims for cls, (dims, _) in _CONVOLUTIONS.items() if isinstance(module, cls))
    return x.dim() == dims + 2


def convolution_gramian(
    module: nn.Module, x: Tensor, delta: Tensor, names: set[str], budget: int
) -> Tensor:
    r"""Gramian over the rows ``(t, b)`` of a call of a convolution on a batch ``x``.

    The gradient of sample ``b`` w.r.t. the weight is
    ``∂W[o, i, κ] = Σ_p δ[b, o, p·s + …] x_pad[b, i, p·s + κ·d]``: a cross-correlation of
    ``x[b, i]`` with ``δ[b, o]``. With the batch in the channels and one group per sample, one
    convolution (stride and dilation swapped) gives every per-sample gradient. The output
    channels are processed in chunks of at most ``budget`` elements of per-sample gradients, so
    that the memory stays bounded; each chunk adds its Gramian.

    Args:
        module: the ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` called.
        x: its input ``[B, I, *spatial]``.
        delta: the gradients w.r.t. its output, ``[T, B, O, *spatial_out]``.
        names: the names of the parameters used (``"weight"`` and/or ``"bias"``).
        budget: the largest number of per-sample gradient elements formed at once.

    Computed in float32 for half-precision calls (under autocast, with ``x`` rounded as the
    convolution used it).
    """
    x, delta = as_computed(x, delta)
    dims, convolution = _CONVOLUTIONS[next(c for c in _CONVOLUTIONS if isinstance(module, c))]
    assert isinstance(module, nn.modules.conv._ConvNd)
    rows, samples, out_channels = delta.shape[:3]
    in_channels = x.shape[1]
    kernel = tuple(module.kernel_size)
    size = rows * samples
    gramian = delta.new_zeros(size, size)
    if "bias" in names:
        bias_jacobian = delta.sum(dim=tuple(range(3, 3 + dims))).reshape(size, out_channels)
        gramian += bias_jacobian @ bias_jacobian.T
    if "weight" not in names:
        return gramian
    # [B, T, O, *spatial]: the rows become extra output channels of each sample.
    delta = delta.transpose(0, 1)
    inputs = x.transpose(0, 1)  # [I, B, *spatial]: one group (one channel) per sample.
    per_channel = size * in_channels * _product(kernel)
    chunk = max(1, budget // per_channel)
    for start in range(0, out_channels, chunk):
        part = delta[:, :, start : start + chunk]
        width = part.shape[2]
        weight = part.reshape(samples * rows * width, 1, *part.shape[3:])
        gradients = convolution(
            inputs,
            weight,
            stride=module.dilation,
            padding=module.padding,
            dilation=module.stride,
            groups=samples,
        )
        # Extra positions appear when the stride does not divide the input: drop them.
        for dim, k in enumerate(kernel, start=2):
            gradients = gradients.narrow(dim, 0, k)
        # [I, B, T, O, *kernel] -> rows (t, b), columns (o, i, *kernel).
        gradients = gradients.reshape(in_channels, samples, rows, width, -1)
        jacobian = gradients.permute(2, 1, 3, 0, 4).reshape(size, -1)
        gramian += jacobian @ jacobian.T
    return gramian


def _product(values: tuple[int, ...]) -> int:
    result = 1
    for value in values:
        result *= value
    return result
