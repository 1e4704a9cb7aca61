"""ConFIG: a conflict-free direction from the pseudo-inverse of the normalised rows."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._bases import Aggregator
from ._checks import CheckedVectors, check_pref_vector, pref_repr, resolve_per_row


class ConFIG(CheckedVectors, Aggregator):
    r"""Conflict-free update of ConFIG.

    With :math:`u_i = g_i / \|g_i\|` (0 for a zero row) and U the matrix of rows
    :math:`u_i`, the direction is :math:`x = U^+ p`, the minimum-norm vector whose cosines
    with the gradients are proportional to the preferences p (default: all ones), normalised
    to :math:`d = x / \max(\|x\|, 10^{-12})`. The output is
    :math:`A(J) = \left(\sum_i g_i \cdot d\right) d`, the direction d scaled by the sum of
    the projections of the gradients on it. Since it only depends on the directions of the
    rows, rescaling the rows by positive factors rescales the output linearly.

    :math:`U^+` is computed by an SVD in which singular values below
    :math:`10 m \varepsilon \sigma_{\max}`, and components of p along the singular directions
    below :math:`10 m \varepsilon \|p\|`, count as zero (ε: the precision of the dtype): when a
    p-weighted sum of the unit rows vanishes (e.g. two opposite rows), x is 0 and so is the
    output, instead of a direction made of rounding noise. Not
    differentiable. From "ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks" (Liu et al., ICLR 2025).

    Args:
        pref_vector: the preferences p, a 1-D tensor of finite values with one entry per row
            (default: ones). It is stored as the buffer ``pref_vector``; assigning a new one
            checks it the same way.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import ConFIG
        >>> ConFIG()(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
        tensor([0.1588, 2.0706, 2.0706])
    """

    differentiable = False

    pref_vector: Tensor | None
    _checked_vectors: ClassVar[dict[str, bool]] = {"pref_vector": True}

    def __init__(self, pref_vector: Tensor | None = None) -> None:
        super().__init__()
        check_pref_vector(pref_vector)
        self.register_buffer(
            "pref_vector", None if pref_vector is None else pref_vector.detach().clone()
        )

    def forward(self, matrix: Tensor, /) -> Tensor:
        m = matrix.shape[0]
        preferences = resolve_per_row(self.pref_vector, "pref_vector", matrix, 1.0)
        if matrix.numel() == 0:
            # No row or no column: the output is the empty sum, zeros (the SVD needs both).
            return matrix.new_zeros(matrix.shape[1])
        norms = torch.linalg.vector_norm(matrix, dim=1, keepdim=True)
        # Exactly-zero rows get u_i = 0; any positive norm is used as is, so that rescaling a
        # row by a positive factor leaves its unit vector unchanged.
        units = torch.where(norms > 0, matrix / torch.where(norms > 0, norms, 1.0), 0.0)
        # U's rows are unit vectors (or zero): singular values are O(1) whatever the scales of
        # the rows, so a cut-off relative to the largest depends on m and the precision only
        # (torch's default, max(m, n)·eps, would drop real directions when n is large).
        rtol = 10 * m * torch.finfo(matrix.dtype).eps
        try:
            left, singular_values, right_t = torch.linalg.svd(units, full_matrices=False)
        except RuntimeError:  # torch.linalg.LinAlgError
            # Only non-finite input makes the SVD fail: return a non-finite output (so that,
            # e.g., GradScaler skips the step) rather than crash.
            return torch.full_like(matrix[0], float("nan"))
        # x = U⁺p = V Σ⁻¹ Pᵀp. Components of p along the kept directions that are at rounding
        # level are zero in exact arithmetic (a p-weighted sum of the unit rows vanishes, e.g.
        # two opposite rows): keeping them would turn rounding noise into a direction.
        coefficients = left.T @ preferences
        kept = (singular_values > rtol * singular_values.max()) & (
            coefficients.abs() > rtol * torch.linalg.vector_norm(preferences)
        )
        safe_values = torch.where(kept, singular_values, 1.0)
        direction: Tensor = right_t.T @ torch.where(kept, coefficients / safe_values, 0.0)
        direction = direction / torch.linalg.vector_norm(direction).clamp(min=1e-12)
        return (matrix @ direction).sum() * direction

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pref_vector={pref_repr(self.pref_vector)})"
