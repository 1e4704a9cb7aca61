"""The Gramian of a Jacobian rescaled by a power of two, so that J Jᵀ neither overflows nor
underflows when the weights do not depend on the scale of the Gramian."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

#: How a weighting's weights react when its Gramian is multiplied by a power of two ``c``:
#: ``"none"``: they may change, the Gramian is ``J Jᵀ`` as is; ``"down"``: unchanged for
#: ``c < 1`` as long as the trace stays above ``4^(HIGH-1)`` (e.g. weights of ``G / tr(G)`` behind a
#: threshold ``norm_eps`` on the trace); ``"any"``: unchanged for every ``c > 0``.
Rescaling = Literal["none", "down", "any"]

#: Jacobians whose largest entry is at least ``2^HIGH`` are scaled down to ``[2^(HIGH-1), 2^HIGH)``:
#: then no entry of the Gramian exceeds ``n · 4^HIGH``, far below float32's maximum ``2^128``
#: for any ``n < 2^47``.
HIGH = 40
#: With ``"any"``, Jacobians whose largest entry is below ``2^LOW`` are scaled up to
#: ``[2^LOW, 2^(LOW+1))``: the largest entries of the Gramian are then far above float32's
#: subnormal range (``< 2^-126``), where they would lose their digits or vanish.
LOW = -40


def rescaled_gramian(matrix: Tensor, rescaling: Rescaling) -> Tensor:
    """The Gramian ``(sJ)(sJ)ᵀ`` of ``matrix`` ``J``, with ``s`` a power of two chosen from the
    largest ``|J_ij|`` as above (``s = 1`` in between, and for ``"none"``).

    On accelerators the factor is found on the device, without a host synchronisation (``J``
    is multiplied even by ``s = 1``); on the CPU, ``s = 1`` skips the multiplication. A
    non-finite ``J`` gives ``s = 1`` (so a non-finite Gramian), and so does an all-zero ``J``.
    """
    if rescaling == "none" or matrix.numel() == 0:
        return matrix @ matrix.T
    if matrix.device.type == "cpu":
        # The common case costs no extra pass over J: the diagonal of J Jᵀ bounds its entries
        # (max|J_ij|² <= max_i G_ii), so a diagonal well inside the range needs no rescaling.
        gramian = matrix @ matrix.T
        top = float(gramian.detach().diagonal().max())
        if top < 4.0**HIGH and (rescaling == "down" or top >= 4.0**LOW):
            return gramian
    # frexp: max|J| = mantissa · 2^exponent with mantissa in [0.5, 1).
    _, exponent = torch.frexp(matrix.detach().abs().amax())
    low = LOW + 1 if rescaling == "any" else torch.iinfo(exponent.dtype).min
    shift = exponent.clamp(min=low, max=HIGH) - exponent
    # 2^shift must be representable: only a subnormal float64 input could ask for more.
    max_shift = math.frexp(torch.finfo(matrix.dtype).max)[1] - 1
    shift = shift.clamp(min=-max_shift, max=max_shift)
    if matrix.device.type == "cpu" and int(shift) == 0:
        # Reading the shift costs nothing on the CPU: skip the copy when there is nothing to do.
        return matrix @ matrix.T
    scale = torch.ldexp(torch.ones((), dtype=matrix.dtype, device=matrix.device), shift)
    scaled = matrix * scale
    return scaled @ scaled.T
