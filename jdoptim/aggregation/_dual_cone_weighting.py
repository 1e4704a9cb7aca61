"""What UPGrad and DualProj share: their arguments, the regularised Gramian and their names."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import CheckedVectors, check_non_negative, check_pref_vector, normalize, pref_repr
from ._checks import resolve_pref_vector as _resolve_pref_vector
from ._dual_cone import DEFAULT_SOLVER, check_solver


class DualConeWeighting(CheckedVectors, Weighting):
    """Base of the weightings that project onto the dual cone of the rows (UPGrad, DualProj).

    Validates and stores ``pref_vector``, ``norm_eps``, ``reg_eps`` and ``solver``, and builds the
    regularised Gramian ``Ĝ = N(G) + reg_eps·I`` on which both solve their QPs. Not differentiable.
    """

    differentiable = False
    pref_vector: Tensor | None
    # The Gramian is trace-normalised first (behind the norm_eps threshold), so scaling it down
    # by a power of two changes no weight: J Jᵀ of very large Jacobians may be rescaled.
    gramian_rescaling = "down"
    _checked_vectors: ClassVar[dict[str, bool]] = {"pref_vector": True}

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

    def solved_at_bounds(self, gramian: Tensor, pref_vector: Tensor, *, each: bool) -> Tensor:
        """Which problems ``min vᵀĜv s.t. v ≥ u`` the bound ``u`` itself solves: ``u ≥ 0`` and
        ``Ĝ u ≥ 0``, its optimality condition (which also holds for ``Ĝ + δI``), so that they
        need no solver.

        ``each``: UPGrad's ``m`` problems ``u = p_i e_i`` (solved when ``p_i = 0``, or when
        ``p_i > 0`` and gradient ``i`` conflicts with no other: ``Ĝ_ij ≥ 0`` for every ``j``);
        otherwise DualProj's one problem ``u = p``. Common when the gradients agree (per-sample
        gradients early in training). ``Ĝ + Ĝᵀ`` is what the solvers see; a NaN compares false
        (such problems go to the solvers). On the CPU the check runs on numpy arrays: a few
        microseconds, where torch's small operations took 5-10 % of a solve at m ≤ 64.
        """
        if gramian.shape[0] == 0:
            return torch.zeros(gramian.shape[0] if each else 1, dtype=torch.bool)
        if gramian.device.type == "cpu" and gramian.dtype in (torch.float32, torch.float64):
            g = gramian.detach().numpy()
            weights = pref_vector.detach().to(gramian.dtype).numpy()
            with np.errstate(invalid="ignore"):
                sums = g + g.T
                if each:
                    agree = (weights == 0.0) | ((weights > 0.0) & (sums.min(axis=1) >= 0.0))
                else:
                    agree = np.array([(weights >= 0.0).all() and (sums @ weights >= 0.0).all()])
            return torch.from_numpy(agree)
        symmetric = gramian + gramian.mT
        p = pref_vector.to(gramian.dtype)
        if each:
            return (p == 0.0) | ((p > 0.0) & (symmetric.amin(dim=1) >= 0.0))
        return ((p >= 0.0).all() & (symmetric @ p >= 0.0).all()).reshape(1)

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
