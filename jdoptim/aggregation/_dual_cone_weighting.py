"""What UPGrad and DualProj share: their arguments, the regularised Gramian and their names."""

from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_non_negative, check_pref_vector, normalize, pref_repr
from ._checks import resolve_pref_vector as _resolve_pref_vector
from ._dual_cone import DEFAULT_SOLVER, check_solver


class DualConeWeighting(Weighting):
    """Base of the weightings that project onto the dual cone of the rows (UPGrad, DualProj).

    Validates and stores ``pref_vector``, ``norm_eps``, ``reg_eps`` and ``solver``, and builds the
    regularised Gramian ``Ĝ = N(G) + reg_eps·I`` on which both solve their QPs. Not differentiable.
    """

    differentiable = False
    pref_vector: Tensor | None

    def __init__(
        self,
        pref_vector: Tensor | None = None,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        solver: str = DEFAULT_SOLVER,
    ) -> None:
        super().__init__()
        check_pref_vector(pref_vector)
        check_non_negative("norm_eps", norm_eps)
        check_non_negative("reg_eps", reg_eps)
        check_solver(solver)
        # Not persistent: it is a constructor argument, not learned state.
        self.register_buffer("pref_vector", pref_vector, persistent=False)
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.solver = solver

    def resolve_pref_vector(self, gramian: Tensor) -> Tensor:
        """The ``[m]`` preference vector for ``gramian``: ``pref_vector`` or uniform ``1/m``."""
        return _resolve_pref_vector(self.pref_vector, gramian, 1.0 / max(gramian.shape[0], 1))

    def regularize(self, gramian: Tensor) -> Tensor:
        """``N(G) + reg_eps·I``: trace-normalised (guarded by ``norm_eps``) and regularised."""
        identity = torch.eye(gramian.shape[0], device=gramian.device, dtype=gramian.dtype)
        return normalize(gramian, self.norm_eps) + self.reg_eps * identity

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pref_vector={pref_repr(self.pref_vector)}, "
            f"norm_eps={self.norm_eps!r}, reg_eps={self.reg_eps!r}, solver={self.solver!r})"
        )

    def __str__(self) -> str:
        if self.pref_vector is None:
            return type(self).__name__
        return f"{type(self).__name__}({pref_repr(self.pref_vector)})"


class DualConeAggregator(GramianWeightedAggregator):
    """Base of UPGrad and DualProj: named like their weighting, with the aggregator's name."""

    differentiable = False

    def __repr__(self) -> str:
        weighting = self.gramian_weighting
        return repr(weighting).replace(type(weighting).__name__, type(self).__name__, 1)

    def __str__(self) -> str:
        weighting = self.gramian_weighting
        return str(weighting).replace(type(weighting).__name__, type(self).__name__, 1)
