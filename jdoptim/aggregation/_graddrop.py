"""GradDrop: coordinate-wise random dropout of gradients by sign."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from ._bases import Aggregator
from ._checks import CheckedVectors, check_vector, resolve_per_row


def identity(purity: Tensor) -> Tensor:
    """The default ``f`` of :class:`GradDrop`: returns its input unchanged."""
    return purity


class GradDrop(CheckedVectors, Aggregator):
    r"""Gradient sign dropout, per coordinate.

    For each column j, the sign purity is
    :math:`P_j = \frac{1}{2}\left(1 + \frac{\sum_i J_{ij}}{\sum_i |J_{ij}|}\right)` (½ for an
    all-zero column) and :math:`U_j \sim \mathcal{U}(0, 1)` is drawn with torch's global random
    number generator on the matrix's device. Entry (i, j) is kept when
    :math:`f(P_j) > U_j` and :math:`J_{ij} > 0`, or :math:`f(P_j) < U_j` and :math:`J_{ij} < 0`
    (mask :math:`M_{ij} = 1`); the output is
    :math:`A(J)_j = \sum_i (\ell_i + (1 - \ell_i) M_{ij}) J_{ij}` with the leak :math:`\ell`.
    A column whose entries all share a sign is kept entirely. Not differentiable. From "Just
    Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout" (Chen et al.,
    NeurIPS 2020).

    Args:
        f: a function applied elementwise to the purity tensor ``[n]``, returning a tensor of
            the same shape (default: the identity).
        leak: the leak :math:`\ell`, a 1-D tensor of finite values with one value per row
            (default: zeros). It is stored as the buffer ``leak``; assigning a new one checks it
            the same way.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import GradDrop
        >>> _ = torch.manual_seed(0)
        >>> GradDrop()(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
        tensor([6., 2., 2.])
    """

    differentiable = False

    leak: Tensor | None
    _checked_vectors: ClassVar[dict[str, bool]] = {"leak": True}

    def __init__(
        self, f: Callable[[Tensor], Tensor] = identity, leak: Tensor | None = None
    ) -> None:
        super().__init__()
        if not callable(f):
            raise TypeError(f"`f` must be callable, but got {type(f).__name__}.")
        if leak is not None:
            if not isinstance(leak, Tensor):
                raise TypeError(
                    f"`leak` must be a torch.Tensor or None, but got {type(leak).__name__}."
                )
            check_vector("leak", leak)
            leak = leak.detach().clone()
        self.f = f
        self.register_buffer("leak", leak)

    def forward(self, matrix: Tensor, /) -> Tensor:
        leak = resolve_per_row(self.leak, "leak", matrix, 0.0)
        total = matrix.sum(dim=0)
        total_magnitude = matrix.abs().sum(dim=0)
        ratio = torch.where(
            total_magnitude > 0,
            total / torch.where(total_magnitude > 0, total_magnitude, 1.0),
            0.0,
        )
        purity = self.f(0.5 * (1.0 + ratio))
        threshold = torch.rand(matrix.shape[1], device=matrix.device, dtype=matrix.dtype)
        keep = ((purity > threshold) & (matrix > 0)) | ((purity < threshold) & (matrix < 0))
        factors = leak[:, None] + (1.0 - leak[:, None]) * keep.to(matrix.dtype)
        return (factors * matrix).sum(dim=0)

    def __repr__(self) -> str:
        f_name = getattr(self.f, "__name__", repr(self.f))
        leak = None if self.leak is None else [round(v, 4) for v in self.leak.tolist()]
        return f"{type(self).__name__}(f={f_name}, leak={leak})"
