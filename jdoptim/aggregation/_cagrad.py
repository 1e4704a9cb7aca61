"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_non_negative, normalize
from ._optional import require
from ._solver_failure import SolverFailure


def _require_cvxpy() -> Any:
    return require("cvxpy", extra="cagrad", user="CAGrad")


class _ConflictAverseProgram:
    """min over the simplex of bᵀu + ‖Qᵀu‖ (b = R g₀, Q = φR), built once per size.

    φ is folded into Q so that the program stays parametrised (DPP): cvxpy compiles it once and
    only updates the data at later solves.
    """

    def __init__(self, size: int) -> None:
        cp = _require_cvxpy()
        self.cp = cp
        self.u = cp.Variable(size)
        self.linear = cp.Parameter(size)
        self.factor = cp.Parameter((size, size))
        objective = self.linear @ self.u + cp.norm(self.factor.T @ self.u, 2)
        constraints = [self.u >= 0, cp.sum(self.u) == 1]
        self.problem = cp.Problem(cp.Minimize(objective), constraints)

    def solve(self, linear: np.ndarray, factor: np.ndarray) -> np.ndarray:
        self.linear.value = linear
        self.factor.value = factor
        try:
            with warnings.catch_warnings():
                # cvxpy warns about inaccurate solutions; those are accepted (and projected
                # back onto the simplex) below.
                warnings.simplefilter("ignore")
                self.problem.solve()
        except (self.cp.error.SolverError, ValueError, ArithmeticError) as error:
            raise SolverFailure(f"{type(error).__name__}: {error}") from error
        value = self.u.value
        if self.problem.status not in ("optimal", "optimal_inaccurate") or value is None:
            raise SolverFailure(f"solver status {self.problem.status!r}")
        if not np.isfinite(value).all():
            raise SolverFailure("the solver returned non-finite values")
        # Clean the solver's tolerance-level violations of the simplex.
        value = np.clip(np.asarray(value, dtype=np.float64), 0.0, None)
        return np.asarray(value / value.sum(), dtype=np.float64)


class CAGradWeighting(Weighting):
    r"""Weights of CAGrad, computed on the normalised Gramian by a small convex program.

    With :math:`N(G) = G / \operatorname{tr}(G)` (the zero matrix when
    :math:`\operatorname{tr}(G) <` ``norm_eps``) factored as :math:`N(G) = R R^\top`
    (:math:`R = U \sqrt{S}` from its SVD :math:`U S U^\top`), :math:`g_0 = R^\top \mathbb{1}/m`
    (the mean gradient in R's coordinates) and :math:`\varphi = c \|g_0\|`:

    .. math::

        u = \operatorname*{argmin}_{u \in \Delta} (R g_0)^\top u + \varphi \|R^\top u\|,
        \qquad w = \frac{1}{m}\mathbb{1} + \frac{\varphi}{\|R^\top u\|} u,

    and :math:`w = 0` when :math:`\|R^\top u\| <` ``norm_eps``. The program is solved with
    ``cvxpy`` in float64 on the CPU. If the solver fails, a warning says why and the uniform
    :math:`u = \mathbb{1}/m` is used instead; a non-finite Gramian gives NaN weights. From
    "Conflict-Averse Gradient Descent for Multi-task Learning" (Liu et al., NeurIPS 2021).

    Args:
        c: the radius parameter :math:`c \ge 0` of the ball around the mean gradient in which
            the update is searched (0 gives the mean).
        norm_eps: threshold on the trace of the Gramian, and on :math:`\|R^\top u\|`, below
            which the weights are zero.

    Raises:
        ImportError: at construction, when ``cvxpy`` is not installed (extra ``cagrad``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import CAGradWeighting
        >>> matrix = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        >>> CAGradWeighting(c=0.5)(matrix @ matrix.T)
        tensor([0.7041, 0.5000])
    """

    # The weights depend on G / tr(G) only, once tr(G) ≥ norm_eps.
    gramian_rescaling = "down"

    differentiable = False

    def __init__(self, c: float, norm_eps: float = 1e-4) -> None:
        super().__init__()
        check_non_negative("c", c)
        check_non_negative("norm_eps", norm_eps)
        _require_cvxpy()
        self.c = c
        self.norm_eps = norm_eps
        self._programs: dict[int, _ConflictAverseProgram] = {}

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        normalized = normalize(gramian, self.norm_eps).to(device="cpu", dtype=torch.float64)
        array = normalized.numpy(force=True)
        if not np.isfinite(array).all():
            return gramian.new_full((m,), float("nan"))
        if not array.any():
            return gramian.new_zeros(m)
        eigenvalues, eigenvectors = np.linalg.eigh((array + array.T) / 2.0)
        # N(G) is symmetric positive semi-definite: U S Uᵀ with S ≥ 0, up to rounding.
        reduced = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
        mean_gradient = reduced.T @ np.full(m, 1.0 / m)
        phi = self.c * float(np.linalg.norm(mean_gradient))
        u = self._solve(reduced, mean_gradient, phi)
        combination_norm = float(np.linalg.norm(reduced.T @ u))
        if combination_norm < self.norm_eps:
            weights = np.zeros(m)
        else:
            weights = np.full(m, 1.0 / m) + (phi / combination_norm) * u
        return torch.from_numpy(weights).to(device=gramian.device, dtype=gramian.dtype)

    def _solve(self, reduced: np.ndarray, mean_gradient: np.ndarray, phi: float) -> np.ndarray:
        """argmin over the simplex of (R g₀)ᵀu + φ‖Rᵀu‖, or 1/m (with a warning) on failure."""
        m = reduced.shape[0]
        program = self._programs.get(m)
        if program is None:
            program = self._programs[m] = _ConflictAverseProgram(m)
        try:
            return program.solve(reduced @ mean_gradient, phi * reduced)
        except SolverFailure as failure:
            reason = str(failure)
        warnings.warn(
            f"CAGrad: the convex program could not be solved ({reason}); using the uniform "
            "u = 1/m (the mean gradient's direction) instead.",
            RuntimeWarning,
            stacklevel=2,
        )
        return np.full(m, 1.0 / m)

    def __getstate__(self) -> dict[str, Any]:
        # The cached cvxpy programs are rebuilt on demand; they need not be copied or pickled.
        state: dict[str, Any] = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state["_programs"] = {}
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(c={self.c!r}, norm_eps={self.norm_eps!r})"


class CAGrad(GramianWeightedAggregator):
    r"""Conflict-averse gradient: :math:`A(J) = J^\top w`, w from :class:`CAGradWeighting`.

    CAGrad looks for the update that maximises the worst improvement among the objectives
    within a ball of radius :math:`c \|g_0\|` around the mean gradient :math:`g_0`; ``c = 0``
    gives the mean gradient. The convex program is solved with ``cvxpy`` (install the extra:
    ``pip install "jdoptim[cagrad]"``). Not differentiable. From "Conflict-Averse Gradient
    Descent for Multi-task Learning" (Liu et al., NeurIPS 2021).

    Args:
        c: the radius parameter, :math:`c \ge 0`.
        norm_eps: threshold under which the Gramian (and the output) is treated as zero.

    Raises:
        ImportError: at construction, when ``cvxpy`` is not installed.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import CAGrad
        >>> CAGrad(c=0.5)(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
        tensor([0.1835, 1.2041, 1.2041])
    """

    differentiable = False

    gramian_weighting: CAGradWeighting

    def __init__(self, c: float, norm_eps: float = 1e-4) -> None:
        super().__init__(CAGradWeighting(c, norm_eps))

    def __repr__(self) -> str:
        weighting = self.gramian_weighting
        return f"{type(self).__name__}(c={weighting.c!r}, norm_eps={weighting.norm_eps!r})"
