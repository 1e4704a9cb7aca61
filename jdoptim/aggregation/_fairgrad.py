"""FairGrad: the update of α-fair resource allocation between the objectives."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._arguments import Checked, Forwarded, optional_integer, real
from ._bases import GramianWeightedAggregator, Weighting
from ._optional import require


def _require_scipy_optimize() -> Any:
    require("scipy", extra="fairgrad", user="FairGrad")
    return require("scipy.optimize", extra="fairgrad", user="FairGrad")


def _require_scipy_linalg_lapack() -> Any:
    return require("scipy.linalg.lapack", extra="fairgrad", user="FairGrad")


class FairGradWeighting(Weighting):
    r"""Weights of FairGrad: the positive solution of :math:`G w = w^{-1/\alpha}`.

    FairGrad maximises the α-fair utility :math:`\sum_i (g_i \cdot d)^{1-\alpha} / (1-\alpha)`
    of the improvements :math:`g_i \cdot d`; its stationarity condition for :math:`d = J^\top w`
    is :math:`G w = w^{-1/\alpha}` (elementwise power). ``alpha = 0`` is the mean (utilitarian
    limit); larger values favour the objectives that improve least.

    Rows with :math:`G_{ii} = 0` get weight 0 and leave the system (all zero rows: all weights
    0). On the remaining block :math:`K`, with :math:`\kappa` the mean of its diagonal and
    :math:`\tilde K = K / \kappa`, the system :math:`\tilde K v = v^{-1/\alpha}` is solved by
    damped Newton steps from the root of its diagonal part, to near machine precision; when they
    do not settle (no root), by bounded nonlinear least squares (trust-region reflective, scipy's
    ``least_squares``, from :math:`v = 1/m`, at most ``max_iters`` residual evaluations), and
    :math:`w = \kappa^{-\alpha/(1+\alpha)} v`. Normalising first makes the result scale
    covariant: :math:`A(cJ) = c^{(1-\alpha)/(1+\alpha)} A(J)`. When no direction improves every
    objective, the system has no root and the weights are the solver's last (finite) iterate.
    Computed in float64 on the CPU; a non-finite Gramian gives NaN weights. Not differentiable.
    From "Fair Resource Allocation in Multi-Task Learning" (Ban & Ji, ICML 2024).

    Args:
        alpha: the fairness parameter :math:`\alpha \ge 0`.
        max_iters: the largest number of residual evaluations of the solver (``None``: 100·m).

    Raises:
        ImportError: at construction, when scipy is not installed (extra ``fairgrad``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import FairGradWeighting
        >>> gramian = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
        >>> FairGradWeighting(alpha=1.0)(gramian).round(decimals=4)
        tensor([0.5000, 1.0000])
    """

    differentiable = False

    alpha = Checked(real(0.0))
    max_iters = Checked(optional_integer(1))

    def __init__(self, alpha: float, max_iters: int | None = None) -> None:
        super().__init__()
        self.alpha = alpha
        self.max_iters = max_iters
        _require_scipy_optimize()

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        if m == 0:
            return gramian.new_zeros(0)
        array = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
        if not np.isfinite(array).all():
            return gramian.new_full((m,), float("nan"))
        if self.alpha == 0.0:
            return gramian.new_full((m,), 1.0 / m)
        active = np.diagonal(array) > 0
        if active.all():
            weights = self._solve(array)
        else:
            weights = np.zeros(m)
            if active.any():
                weights[active] = self._solve(array[np.ix_(active, active)])
        return torch.from_numpy(weights).to(device=gramian.device, dtype=gramian.dtype)

    def _solve(self, block: np.ndarray) -> np.ndarray:
        """The positive root w of ``block @ w = w ** (-1/alpha)``, found on the normalised block."""
        size = block.shape[0]
        kappa = float(np.mean(np.diagonal(block)))
        normalised = block / kappa
        exponent = -1.0 / self.alpha

        def residual(v: np.ndarray) -> np.ndarray:
            result: np.ndarray = normalised @ v - np.power(v, exponent)
            return result

        max_evaluations = self.max_iters if self.max_iters is not None else 100 * size
        root = _newton_root(normalised, exponent, max_evaluations)
        if root is not None:
            found: np.ndarray = kappa ** (-self.alpha / (1.0 + self.alpha)) * root
            return found
        solution = _require_scipy_optimize().least_squares(
            residual,
            np.full(size, 1.0 / size),
            bounds=(0.0, np.inf),
            method="trf",
            max_nfev=max_evaluations,
        )
        scaled: np.ndarray = kappa ** (-self.alpha / (1.0 + self.alpha)) * solution.x
        return scaled

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha!r}, max_iters={self.max_iters!r})"


def _newton_root(matrix: np.ndarray, exponent: float, max_steps: int) -> np.ndarray | None:
    """The root ``v > 0`` of ``matrix @ v = v ** exponent`` by damped Newton steps, or None when
    they do not reach it to near machine precision (then the least-squares solver decides).

    The residual is the gradient of the strictly convex potential ``½ vᵀ K v − Σ φ(vᵢ)`` with
    ``φ' = v ** exponent``, and its Jacobian that potential's (positive definite) Hessian, so
    Newton steps descend it: a step that does not reduce the residual is halved until it
    decreases the potential enough (Armijo), which reaches even roots far from the start (nearly
    opposite gradients give huge weights). Where a root exists it is unique, so the least-squares
    solver finds the same one. Newton starts from the root of the diagonal part (exact when the
    objectives are orthogonal) and needs a few ``m × m`` solves, each one LAPACK call: at m = 2
    the whole root costs tens of microseconds, against milliseconds for scipy's least squares.
    """
    lapack = _require_scipy_linalg_lapack()
    size = matrix.shape[0]
    diagonal = np.arange(size)

    def residual_at(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        power = np.power(v, exponent)
        product = matrix @ v
        residual = product - power
        # The size of the terms, not of their sum: K v cancels when the gradients nearly oppose.
        scale = max((np.abs(matrix) @ v).tolist()) + max(power.tolist())
        return residual, power, scale

    def potential(v: np.ndarray) -> float:
        quadratic = 0.5 * float(v @ (matrix @ v))
        if exponent == -1.0:
            return quadratic - float(np.log(v).sum())
        return quadratic - float(np.power(v, 1.0 + exponent).sum()) / (1.0 + exponent)

    v: np.ndarray = np.power(np.diagonal(matrix), 1.0 / (exponent - 1.0))
    residual, power, scale = residual_at(v)
    for _ in range(min(max_steps, 100)):
        size_now = max(np.abs(residual).tolist())
        if size_now <= 1e-13 * scale:
            return v
        hessian = matrix.copy()
        hessian[diagonal, diagonal] -= exponent * power / v
        step: np.ndarray
        step, info = lapack.dgesv(hessian, residual)[2:]
        if info != 0:
            return None
        largest = float((step / v).max())
        # Stay inside v > 0, where the potential is defined: at most 99 % of the way to 0.
        t = 1.0 if largest < 1.0 else 0.99 / largest
        slope = float(residual @ step)
        current: float | None = None  # the potential at v, computed once if a step is refused
        while True:
            candidate = v - t * step
            if np.isfinite(candidate).all() and bool((candidate > 0.0).all()):
                new_residual, new_power, new_scale = residual_at(candidate)
                if max(np.abs(new_residual).tolist()) < size_now:
                    break
                current = potential(v) if current is None else current
                if potential(candidate) <= current - 1e-4 * t * slope:
                    break
            t *= 0.5
            if t < 1e-12:
                return None
        v, residual, power, scale = candidate, new_residual, new_power, new_scale
    return None


class FairGrad(GramianWeightedAggregator):
    r"""FairGrad: :math:`A(J) = J^\top w` with the α-fair weights of :class:`FairGradWeighting`.

    The update maximises the α-fair utility of the objectives' improvements:
    ``alpha = 0`` gives the mean gradient, ``alpha = 1`` the proportionally fair update (then
    the output does not change when J is scaled), larger values move towards the max-min fair
    one. Scale covariant: :math:`A(cJ) = c^{(1-\alpha)/(1+\alpha)} A(J)` for :math:`c > 0`.
    Needs scipy (``pip install "jdoptim[fairgrad]"``). Not differentiable. From "Fair Resource
    Allocation in Multi-Task Learning" (Ban & Ji, ICML 2024).

    Args:
        alpha: the fairness parameter :math:`\alpha \ge 0`.
        max_iters: the largest number of residual evaluations of the solver (``None``: 100·m).

    Raises:
        ImportError: at construction, when scipy is not installed.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import FairGrad
        >>> FairGrad(alpha=1.0)(torch.tensor([[2.0, 0.0], [0.0, 1.0]])).round(decimals=4)
        tensor([1., 1.])
    """

    differentiable = False

    gramian_weighting: FairGradWeighting

    alpha = Forwarded()
    max_iters = Forwarded()

    def __init__(self, alpha: float, max_iters: int | None = None) -> None:
        super().__init__(FairGradWeighting(alpha, max_iters))

    def __repr__(self) -> str:
        weighting = self.gramian_weighting
        return (
            f"{type(self).__name__}(alpha={weighting.alpha!r}, max_iters={weighting.max_iters!r})"
        )
