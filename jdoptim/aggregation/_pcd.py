"""PCD: priority-constrained descent, the primary objective first."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._arguments import Checked, Forwarded, check_length, real
from ._bases import GramianWeightedAggregator, Weighting
from ._state import StatefulModule


def _check_tau(name: str, value: object) -> float | Tensor:
    if isinstance(value, Tensor):
        if value.dim() != 1 or not value.dtype.is_floating_point:
            raise ValueError(
                f"`{name}` must be a float or a 1-D floating tensor, but got a tensor of shape "
                f"{list(value.shape)} and dtype {value.dtype}."
            )
        values = value.detach()
        if not bool(((values >= 0) & (values <= 1)).all()):
            raise ValueError(f"`{name}` must have entries in [0, 1], but got {values.tolist()!r}.")
        return values.clone()
    return real(0.0, 1.0)(name, value)


def _priority_descent(
    gramian: np.ndarray, tau: np.ndarray, rank_tolerance: float, max_changes: int
) -> np.ndarray:
    """Coefficients u of ``d = Σ uᵢ gᵢ``, the point nearest to g₁ with ``gⱼ·d ≥ τⱼ‖gⱼ‖²``.

    A dual active-set method (Goldfarb–Idnani) for the identity Hessian, written on the
    Gramian only: it starts from d = g₁ and adds the most violated constraint at each step,
    dropping the active ones whose multiplier would turn negative. Returns e₁ when the
    constraints cannot all hold.
    """
    m = gramian.shape[0]
    multipliers = np.zeros(m)
    coefficients = np.zeros(m)
    coefficients[0] = 1.0
    active: list[int] = []
    tolerance = 1e-9 * float(np.max(np.diagonal(gramian)))
    targets = tau * np.diagonal(gramian)[1:]
    fallback: np.ndarray = np.eye(m)[0]
    changes = 0

    def slack(j: int) -> float:
        return float(gramian[j] @ coefficients - targets[j - 1])

    while True:
        slacks = gramian[1:] @ coefficients - targets
        slacks[[j - 1 for j in active]] = np.inf
        if slacks.size == 0:
            return coefficients
        candidate = int(np.argmin(slacks)) + 1
        if slacks[candidate - 1] >= -tolerance:
            return coefficients
        while True:
            if changes >= max_changes:
                return coefficients
            changes += 1
            if active:
                block = gramian[np.ix_(active, active)]
                ratios = np.linalg.lstsq(block, gramian[active, candidate], rcond=None)[0]
            else:
                ratios = np.zeros(0)
            curvature = float(gramian[candidate, candidate] - gramian[candidate, active] @ ratios)
            dependent = curvature <= rank_tolerance * gramian[candidate, candidate]
            blocking = [
                (multipliers[k] / ratios[i], i) for i, k in enumerate(active) if ratios[i] > 0
            ]
            dual_step, blocker = min(blocking) if blocking else (np.inf, -1)
            if dependent:
                if blocker < 0:
                    return fallback  # The constraints are infeasible.
                step = dual_step
            else:
                step = min(dual_step, -slack(candidate) / curvature)
            direction = np.zeros(m)
            direction[candidate] = 1.0
            direction[active] -= ratios
            if not dependent:
                coefficients = coefficients + step * direction
            multipliers[active] -= step * ratios
            multipliers[candidate] += step
            if not dependent and step < dual_step:
                active.append(candidate)
                break
            dropped = active.pop(blocker)
            multipliers[dropped] = 0.0
            if not dependent and slack(candidate) >= -tolerance:
                active.append(candidate)
                break
        coefficients = multipliers.copy()
        coefficients[0] = 1.0


class PCDWeighting(StatefulModule, Weighting):
    r"""Weights of PCD: descend on the first objective, under a guaranteed share for the others.

    Row 1 is the primary objective (the order of the rows matters). With
    :math:`q = \operatorname{diag} G`, a moving average :math:`v \leftarrow \beta v + (1 -
    \beta) q` of the squared norms (bias-corrected: :math:`\hat v = v / (1 - \beta^t)`) and
    :math:`s_i = (\hat v_i + \text{eps})^{-1/2}`, the rescaled gradients
    :math:`\tilde g_i = s_i g_i` define

    .. math::

        \tilde d = \operatorname*{argmin}_d \tfrac12 \|d - \tilde g_1\|^2 \quad \text{s.t.}
        \quad \tilde g_j \cdot d \ge \tau_j \|\tilde g_j\|^2, \ j = 2, \dots, m,

    solved exactly on the Gramian by a dual active-set method (:math:`\tilde d = \sum_i u_i
    \tilde g_i` with :math:`u = (1, \mu_2, \dots, \mu_m)`, μ the multipliers). The update is
    :math:`\tilde d` rescaled to the norm of :math:`g_1`, so :math:`w = u \odot s \cdot
    \sqrt{q_1 / u^\top \hat G u}`. Infeasible constraints give :math:`g_1` itself; a zero
    :math:`g_1` gives zero weights. Rank decisions are taken at the precision of the input.

    The state (buffers ``second_moment`` and ``step``) is saved by ``state_dict``;
    :meth:`reset` forgets it, and it restarts by itself when m changes. A non-finite Gramian
    gives NaN weights and leaves the state unchanged. Computed in float64 on the CPU. Not
    differentiable. From "Not All Objectives Are Born Equal: Priority-Constrained Descent for
    Hierarchical Multi-Objective Optimization" (Varam & AlHajri, TMLR 2026).

    Args:
        tau: the share :math:`\tau_j \in [0, 1]` of its own squared norm that each secondary
            objective must gain: one float for all, or a 1-D tensor of m − 1 values.
        beta: the decay :math:`\beta \in [0, 1)` of the moving average of squared norms.
        eps: added to :math:`\hat v` before the inverse square root (``≥ 0``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import PCDWeighting
        >>> matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
        >>> PCDWeighting(tau=0.5)(matrix @ matrix.T)
        tensor([1.1547, 0.9856])
    """

    differentiable = False

    tau = Checked(_check_tau)
    beta = Checked(real(0.0, 1.0, high_open=True))
    eps = Checked(real(0.0))

    second_moment: Tensor
    step: Tensor

    def __init__(self, tau: float | Tensor = 0.02, beta: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__()
        self.tau = tau
        self.beta = beta
        self.eps = eps
        self._add_state("second_moment")
        self._add_state("step", torch.int64)

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        tau = self.tau
        if isinstance(tau, Tensor):
            check_length(tau, "tau", m - 1, f"one per secondary objective: m - 1, with m = {m}")
        if m == 0:
            return gramian.new_zeros(0)
        array = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
        if not np.isfinite(array).all():
            return gramian.new_full((m,), float("nan"))
        squared_norms = np.diagonal(array).copy()
        second_moment = self._state("second_moment").to("cpu", torch.float64).numpy()
        step = int(self._state("step"))
        if second_moment.shape != (m,):
            second_moment, step = np.zeros(m), 0
        second_moment = self.beta * second_moment + (1.0 - self.beta) * squared_norms
        step += 1
        device = self._state("second_moment").device
        self._set_state("second_moment", torch.from_numpy(second_moment).to(device))
        self._set_state("step", torch.tensor(step, device=device))
        if squared_norms[0] <= 0:
            return gramian.new_zeros(m)
        corrected = second_moment / (1.0 - self.beta**step)
        shifted = corrected + self.eps
        scales = np.where(shifted > 0, 1.0 / np.sqrt(np.where(shifted > 0, shifted, 1.0)), 0.0)
        scaled = array * np.outer(scales, scales)
        tau_values = (
            tau.to("cpu", torch.float64).numpy() if isinstance(tau, Tensor) else np.full(m - 1, tau)
        )
        resolution = 10.0 * torch.finfo(gramian.dtype).eps
        coefficients = _priority_descent(
            scaled, tau_values, max(1e-9, resolution), max_changes=10 * m
        )
        squared_norm = float(coefficients @ scaled @ coefficients)
        magnitude = float(np.abs(coefficients) @ np.sqrt(np.clip(np.diagonal(scaled), 0, None)))
        if squared_norm > resolution * magnitude**2:
            weights = coefficients * scales * np.sqrt(squared_norms[0] / squared_norm)
        else:
            weights = np.zeros(m)
        return torch.from_numpy(weights).to(device=gramian.device, dtype=gramian.dtype)

    def __repr__(self) -> str:
        tau = self.tau.tolist() if isinstance(self.tau, Tensor) else self.tau
        return f"{type(self).__name__}(tau={tau!r}, beta={self.beta!r}, eps={self.eps!r})"


class PCD(GramianWeightedAggregator):
    r"""Priority-constrained descent: :math:`A(J) = J^\top w`, w from :class:`PCDWeighting`.

    The update is the direction nearest to the (rescaled) gradient of the first objective that
    still improves every other objective j by at least a share :math:`\tau_j` of its own
    rescaled squared norm, with the norm of the first gradient. The order of the rows matters:
    row 1 is the primary objective. Stateful (a moving average of the squared gradient norms;
    :meth:`reset`). Not differentiable. From "Not All Objectives Are Born Equal:
    Priority-Constrained Descent for Hierarchical Multi-Objective Optimization" (Varam &
    AlHajri, TMLR 2026).

    Args:
        tau: the guaranteed share(s) :math:`\tau_j \in [0, 1]` (a float, or m − 1 values).
        beta: the decay of the moving average of squared norms, in ``[0, 1)``.
        eps: added before the inverse square root of that average (``≥ 0``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import PCD
        >>> PCD(tau=0.5)(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
        tensor([0.1691, 0.9856])
    """

    differentiable = False

    gramian_weighting: PCDWeighting

    tau = Forwarded()
    beta = Forwarded()
    eps = Forwarded()

    def __init__(self, tau: float | Tensor = 0.02, beta: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(PCDWeighting(tau, beta, eps))

    def __repr__(self) -> str:
        return repr(self.gramian_weighting).replace("PCDWeighting", type(self).__name__, 1)
