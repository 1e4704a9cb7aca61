"""ExcessMTL: robust weights from the objectives' estimated excess risks."""

from __future__ import annotations

import torch
from torch import Tensor

from ._arguments import Checked, Forwarded, integer, real
from ._matrix_weighting import MatrixWeighting, WeightedAggregator
from ._state import StatefulModule


class ExcessMTLWeighting(StatefulModule, MatrixWeighting):
    r"""Weights of ExcessMTL, computed on the Jacobian (it needs per-coordinate gradients).

    With :math:`S` the running sum of the squared gradients :math:`J \odot J` (this call's
    included), the excess risk of objective i is estimated as
    :math:`e_i = \sum_k J_{ik}^2 / \sqrt{S_{ik} + 10^{-7}}` (:math:`g_i^\top H_i^{-1} g_i` with
    the diagonal AdaGrad curvature). The first :math:`W = \max(\text{n\_warmup\_steps}, 1)`
    calls only add :math:`e` to a warm-up sum and return the uniform weights; the baseline is
    then :math:`b = (\text{sum})/W`, and every later call makes one exponentiated-gradient step
    on the simplex with the relative excess risks :math:`r_i = e_i / (b_i + 10^{-7})`:

    .. math::

        \alpha_i \leftarrow \frac{\alpha_i e^{\eta r_i}}{\sum_j \alpha_j e^{\eta r_j}}.

    The state (buffers ``weights``, ``squared_sum``, ``baseline``, ``warmup_sum``, ``step``;
    one more Jacobian in memory) is saved by ``state_dict``; :meth:`reset` forgets it, as does
    a change of the shape of J. A non-finite Jacobian gives NaN weights and leaves the state
    unchanged. Computed on J's device. Not differentiable. From "Robust Multi-Task Learning with
    Excess Risks" (He et al., ICML 2024).

    Args:
        robust_step_size: the step size :math:`\eta > 0` of the weights.
        n_warmup_steps: the number of calls averaged into the baseline (``≥ 0``; 0 and 1 both
            use the first call only).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import ExcessMTLWeighting
        >>> weighting = ExcessMTLWeighting()
        >>> weighting(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([0.5000, 0.5000])
        >>> weighting(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([0.2532, 0.7468])
    """

    differentiable = False

    robust_step_size = Checked(real(0.0, low_open=True))
    n_warmup_steps = Checked(integer(0))

    weights: Tensor
    squared_sum: Tensor
    baseline: Tensor
    warmup_sum: Tensor
    step: Tensor

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        super().__init__()
        self.robust_step_size = robust_step_size
        self.n_warmup_steps = n_warmup_steps
        for name in ("weights", "squared_sum", "baseline", "warmup_sum"):
            self._add_state(name)
        self._add_state("step", torch.int64)

    def forward(self, matrix: Tensor, /) -> Tensor:
        m = matrix.shape[0]
        if m == 0:
            return matrix.new_zeros(0)
        jacobian = matrix.detach()
        squared_sum = self._state("squared_sum")
        fresh = squared_sum.shape != jacobian.shape
        squared_sum = jacobian.new_zeros(jacobian.shape) if fresh else squared_sum.to(jacobian)
        squared = jacobian * jacobian
        new_squared_sum = squared_sum + squared
        excess = (squared / (new_squared_sum + 1e-7).sqrt()).sum(dim=1)
        if not bool(torch.isfinite(excess).all()):
            return matrix.new_full((m,), float("nan"))
        weights = jacobian.new_full((m,), 1.0 / m) if fresh else self._state("weights").to(jacobian)
        warmup_sum = jacobian.new_zeros(m) if fresh else self._state("warmup_sum").to(jacobian)
        baseline = jacobian.new_zeros(0) if fresh else self._state("baseline").to(jacobian)
        step = 0 if fresh else int(self._state("step"))
        warmup = max(self.n_warmup_steps, 1)
        if step < warmup:
            warmup_sum = warmup_sum + excess
        else:
            if baseline.shape[0] == 0:
                baseline = warmup_sum / warmup
            relative = excess / (baseline + 1e-7)
            weights = torch.softmax(weights.log() + self.robust_step_size * relative, dim=0)
        self._set_state("squared_sum", new_squared_sum)
        self._set_state("weights", weights)
        self._set_state("warmup_sum", warmup_sum)
        self._set_state("baseline", baseline)
        self._set_state("step", torch.tensor(step + 1, device=jacobian.device))
        return weights

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(robust_step_size={self.robust_step_size!r}, "
            f"n_warmup_steps={self.n_warmup_steps!r})"
        )


class ExcessMTL(WeightedAggregator):
    r"""ExcessMTL: :math:`A(J) = J^\top \alpha`, α from :class:`ExcessMTLWeighting`.

    Weights on the simplex that grow, by exponentiated-gradient steps, for the objectives whose
    estimated excess risk (distance to their own optimum, measured with a diagonal AdaGrad
    curvature) is large relative to its value at the start. Reads the Jacobian, not only its
    Gramian. Stateful (:meth:`reset`). Not differentiable. From "Robust Multi-Task Learning with
    Excess Risks" (He et al., ICML 2024).

    Args:
        robust_step_size: the step size of the weights (``> 0``).
        n_warmup_steps: the number of calls averaged into the baseline excess risks (``≥ 0``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import ExcessMTL
        >>> ExcessMTL()(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([0.5000, 1.0000])
    """

    weighting: ExcessMTLWeighting

    robust_step_size = Forwarded()
    n_warmup_steps = Forwarded()

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        super().__init__(ExcessMTLWeighting(robust_step_size, n_warmup_steps))

    def __repr__(self) -> str:
        return repr(self.weighting).replace("ExcessMTLWeighting", type(self).__name__, 1)
