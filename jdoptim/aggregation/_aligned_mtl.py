"""Aligned-MTL: align the principal components of the Jacobian before combining the rows."""

from __future__ import annotations

from typing import ClassVar, cast

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import CheckedVectors, check_pref_vector, pref_repr, resolve_pref_vector

_SCALE_MODES = ("min", "median", "rmse")


def _check_scale_mode(scale_mode: str) -> None:
    if not isinstance(scale_mode, str):
        raise TypeError(f"`scale_mode` must be a string, but got {type(scale_mode).__name__}.")
    if scale_mode not in _SCALE_MODES:
        raise ValueError(
            f"`scale_mode` must be one of {list(_SCALE_MODES)}, but got {scale_mode!r}."
        )


class AlignedMTLWeighting(CheckedVectors, Weighting):
    r"""Weights of Aligned-MTL: :math:`w = B p` with
    :math:`B = \sqrt{s}\, V_k \Lambda_k^{-1/2} V_k^\top`.

    :math:`G = V \Lambda V^\top` is the eigendecomposition of the Gramian (in float64); the kept
    eigenpairs :math:`(V_k, \Lambda_k)` are those with
    :math:`\lambda > \max(\lambda) \cdot m \cdot \varepsilon` (``ε`` the machine epsilon of the
    Gramian's dtype), and :math:`B = I` when none is kept.
    The scale ``s`` is the smallest (``"min"``), the median (``"median"``, the lower one for an
    even count, as :func:`torch.median`) or the mean (``"rmse"``) of the kept eigenvalues. For
    ``G = J Jᵀ``, the Gramian of :math:`B J` is :math:`s V_k V_k^\top`: every kept principal
    component of the Jacobian gets the same magnitude :math:`\sqrt{s}` (they are aligned). From
    `Independent Component Alignment for Multi-Task Learning <https://arxiv.org/abs/2305.19000>`_
    (Senushkin et al., CVPR 2023).

    Args:
        pref_vector: ``[m]`` preference vector ``p`` (finite); ``None`` means uniform ``1/m``.
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import AlignedMTLWeighting
        >>> AlignedMTLWeighting()(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([0.5000, 0.2500])
    """

    # The weights do not depend on the scale of the Gramian.
    gramian_rescaling = "any"

    pref_vector: Tensor | None
    _checked_vectors: ClassVar[dict[str, bool]] = {"pref_vector": True}

    def __init__(self, pref_vector: Tensor | None = None, scale_mode: str = "min") -> None:
        super().__init__()
        check_pref_vector(pref_vector)
        _check_scale_mode(scale_mode)
        # Not persistent: it is a constructor argument, not learned state.
        self.register_buffer("pref_vector", pref_vector, persistent=False)
        self.scale_mode = scale_mode

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        pref_vector = resolve_pref_vector(self.pref_vector, gramian, 1.0 / max(m, 1))
        if m == 0:
            return pref_vector
        # float64: the inverse square roots amplify the eigensolver's error on small eigenvalues.
        gram = gramian.to(torch.float64)
        # Guard the eigendecomposition against non-finite input without a host sync.
        finite = torch.isfinite(gram).all()
        safe_gram = torch.where(finite, gram, torch.zeros_like(gram))
        eigenvalues, eigenvectors = torch.linalg.eigh(safe_gram)  # ascending eigenvalues
        # The precision in which G was computed decides which eigenvalues are rounding noise.
        threshold = eigenvalues[-1] * m * torch.finfo(gramian.dtype).eps
        kept = eigenvalues > threshold
        n_kept = kept.sum()
        # Masked rather than indexed, so that shapes never depend on the data.
        safe_eigenvalues = torch.where(kept, eigenvalues, torch.ones_like(eigenvalues))
        inverse_roots = torch.where(kept, safe_eigenvalues.rsqrt(), torch.zeros_like(eigenvalues))
        scale = torch.where(n_kept > 0, self._scale(safe_eigenvalues, kept, n_kept), 1.0)
        basis = scale.sqrt() * (eigenvectors * inverse_roots) @ eigenvectors.T
        identity = torch.eye(m, device=gram.device, dtype=gram.dtype)
        basis = torch.where(n_kept > 0, basis, identity)
        weights = basis @ pref_vector.to(gram.dtype)
        weights = torch.where(finite, weights, torch.full_like(weights, float("nan")))
        return weights.to(gramian.dtype)

    def _scale(self, safe_eigenvalues: Tensor, kept: Tensor, n_kept: Tensor) -> Tensor:
        """The statistic ``s`` of the kept eigenvalues (the largest ``n_kept`` ones)."""
        if self.scale_mode == "min":
            return torch.where(kept, safe_eigenvalues, torch.inf).min()
        if self.scale_mode == "rmse":
            kept_sum = torch.where(kept, safe_eigenvalues, 0.0).sum()
            return kept_sum / n_kept.clamp(min=1)
        # Lower median of the kept eigenvalues, which occupy the last n_kept (ascending) slots.
        m = safe_eigenvalues.shape[0]
        index = m - n_kept + torch.div(n_kept - 1, 2, rounding_mode="floor")
        return safe_eigenvalues[index.clamp(0, m - 1)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pref_vector={pref_repr(self.pref_vector)}, "
            f"scale_mode={self.scale_mode!r})"
        )

    def __str__(self) -> str:
        if self.pref_vector is None:
            return type(self).__name__
        return f"{type(self).__name__}({pref_repr(self.pref_vector)})"


class AlignedMTL(GramianWeightedAggregator):
    r"""Aligned-MTL: :math:`A(J) = J^\top B p` with ``B`` from :class:`AlignedMTLWeighting`.

    The Jacobian's principal components (eigenvectors of ``J Jᵀ``) are rescaled so that they
    all have the same magnitude :math:`\sqrt{s}`, removing the dominance of one objective
    and the instability of ill-conditioned Jacobians; the aligned rows are then combined with
    ``pref_vector``. From `Independent Component Alignment for Multi-Task Learning
    <https://arxiv.org/abs/2305.19000>`_ (Senushkin et al., CVPR 2023).

    Args:
        pref_vector: ``[m]`` preference vector (finite values); ``None`` means uniform ``1/m``.
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``, the statistic of the kept
            eigenvalues of ``J Jᵀ`` used as the common squared magnitude.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import AlignedMTL
        >>> AlignedMTL()(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([0.5000, 0.5000])
    """

    def __init__(self, pref_vector: Tensor | None = None, scale_mode: str = "min") -> None:
        super().__init__(AlignedMTLWeighting(pref_vector, scale_mode))

    def __repr__(self) -> str:
        weighting = cast(AlignedMTLWeighting, self.gramian_weighting)
        return repr(weighting).replace(type(weighting).__name__, type(self).__name__, 1)

    def __str__(self) -> str:
        weighting = cast(AlignedMTLWeighting, self.gramian_weighting)
        return str(weighting).replace(type(weighting).__name__, type(self).__name__, 1)
