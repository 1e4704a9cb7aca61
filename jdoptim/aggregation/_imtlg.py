"""IMTL-G: the combination of the rows whose projections on every unit row are equal."""

from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting

#: Below this absolute value of ``Σv`` the weights are zero rather than a huge or NaN ratio.
_SUM_EPS = 1e-12


class IMTLGWeighting(Weighting):
    r"""Weights of IMTL-G: :math:`w = v / \sum_i v_i` with :math:`v = G^{+} d` and
    :math:`d = \sqrt{\operatorname{diag}(G)}`.

    For ``G = J Jᵀ``, :math:`J^\top w` has the same projection on every normalised row
    :math:`g_i / \lVert g_i \rVert` (when the rows are linearly independent). The weights are
    zero when :math:`|\sum_i v_i| < 10^{-12}`, so an all-zero Gramian gives zeros, never NaN;
    ``v`` is computed on :math:`G / \operatorname{tr}(G)` (which leaves ``w`` unchanged), so that
    this test does not depend on the scale of the gradients.
    Computed in float64. When the unit rows :math:`g_i / \lVert g_i \rVert` are linearly
    independent, :math:`v = D^{-1/2} C^{-1} \mathbf{1}` with :math:`D = \operatorname{diag}(G)`
    and :math:`C = D^{-1/2} G D^{-1/2}` (the same ``v``, accurate even when the norms of the
    rows differ by orders of magnitude); otherwise :math:`G^{+}` drops the eigenvalues below
    :math:`\max(\lambda) \cdot m \cdot \varepsilon` with ``ε`` the machine epsilon of the
    Gramian's dtype: those of a float32 Gramian are rounding noise, whose inverse would make up
    the weights. Independence is judged by the same cut on ``C``, so that rows whose norms
    differ by orders of magnitude all count. A non-finite Gramian gives NaN weights. From
    `Towards Impartial Multi-task Learning <https://openreview.net/forum?id=IMPnRXEWpvr>`_
    (Liu et al., ICLR 2021).

    Not differentiable: backpropagating through the weights raises
    :class:`~jdoptim.aggregation.NonDifferentiableError`.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import IMTLGWeighting
        >>> IMTLGWeighting()(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([0.6667, 0.3333])
    """

    # The weights do not depend on the scale of the Gramian.
    gramian_rescaling = "any"

    differentiable = False

    def forward(self, gramian: Tensor, /) -> Tensor:
        gram = gramian.to(torch.float64)
        # Guard the decomposition inside pinv against non-finite input without a host sync.
        finite = torch.isfinite(gram).all()
        safe_gram = torch.where(finite, gram, torch.zeros_like(gram))
        # w is unchanged by a rescaling of G, but Σv scales like 1/‖gᵢ‖: work with G / tr(G) so
        # that the test |Σv| < 1e-12 does not zero out the weights of large gradients.
        trace = safe_gram.diagonal().clamp(min=0.0).sum()
        safe_gram = safe_gram / torch.where(trace > 0, trace, torch.ones_like(trace))
        # The rank follows the precision in which G was computed, not float64's: eigenvalues
        # that are rounding noise (about m·ε(dtype) relative to the largest) are cut, since
        # their inverse would give weights made of that noise. When the unit rows are linearly
        # independent (C = D^(-1/2) G D^(-1/2), their Gramian, is well above that noise), v is
        # computed as D^(-1/2) C⁻¹ 1, which is G⁻¹ d but accurate even when the norms of the
        # rows differ by orders of magnitude: a row 10⁴ times smaller than another has an
        # eigenvalue of G 10⁸ times smaller, below float32's cut, yet it must count, as the
        # method's indifference to scale requires.
        m = gramian.shape[0]
        relative_noise = m * torch.finfo(gramian.dtype).eps
        diagonal = safe_gram.diagonal().clamp(min=0.0)
        norms = diagonal.sqrt()
        inverse_norms = torch.where(diagonal > 0, diagonal.rsqrt(), torch.zeros_like(diagonal))
        unit_gram = inverse_norms[:, None] * safe_gram * inverse_norms[None, :]
        unit_eigenvalues, unit_vectors = torch.linalg.eigh(unit_gram)
        independent = unit_eigenvalues[:1] > relative_noise * unit_eigenvalues[-1:]
        safe_eigenvalues = torch.where(independent, unit_eigenvalues, 1.0)
        ones = (diagonal > 0).to(gram)
        v_independent = inverse_norms * (unit_vectors @ (unit_vectors.T @ ones / safe_eigenvalues))
        v_dependent = torch.linalg.pinv(safe_gram, rtol=relative_noise, hermitian=True) @ norms
        v = torch.where(independent, v_independent, v_dependent)
        total = v.sum()
        negligible = total.abs() < _SUM_EPS
        safe_total = torch.where(negligible, torch.ones_like(total), total)
        weights = torch.where(negligible, torch.zeros_like(v), v / safe_total)
        weights = torch.where(finite, weights, torch.full_like(weights, float("nan")))
        return weights.to(gramian.dtype)


class IMTLG(GramianWeightedAggregator):
    r"""Impartial Multi-Task Learning, gradient part: :math:`A(J) = J^\top w` with ``w`` from
    :class:`IMTLGWeighting`.

    The output is the combination of the rows, with weights summing to 1, whose projections on
    the unit vectors :math:`g_i / \lVert g_i \rVert` are all equal: no objective is favoured
    because of the scale of its gradient. An all-zero matrix gives zeros. From `Towards
    Impartial Multi-task Learning <https://openreview.net/forum?id=IMPnRXEWpvr>`_ (Liu et al.,
    ICLR 2021).

    Not differentiable: backpropagating through the output raises
    :class:`~jdoptim.aggregation.NonDifferentiableError`.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import IMTLG
        >>> IMTLG()(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([0.6667, 0.6667])
    """

    differentiable = False

    def __init__(self) -> None:
        super().__init__(IMTLGWeighting())
