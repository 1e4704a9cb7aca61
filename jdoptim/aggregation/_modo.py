"""MoDo: multi-objective gradient with double sampling."""

from __future__ import annotations

import torch
from torch import Tensor

from ._arguments import Checked, real
from ._bases import Weighting
from ._simplex import project_onto_simplex
from ._state import StatefulModule


def load_simplex_state(module: StatefulModule, name: str, m: int) -> Tensor:
    """The float64 CPU state ``name`` on the simplex, or 1/m when unset or of another size."""
    state = module._state(name).to("cpu", torch.float64)
    if state.shape != (m,):
        return torch.full((m,), 1.0 / m, dtype=torch.float64)
    return state


class MoDoWeighting(StatefulModule, Weighting):
    r"""Weights of MoDo: a projected gradient step on the simplex per call, from two mini-batches.

    The statistic is a *cross matrix* :math:`A = J_1 J_2^\top` ``[m, m]``, the products of the
    gradients of two independent mini-batches (square, generally not symmetric), which makes
    :math:`A\lambda` an unbiased estimate of the gradient of :math:`\frac12\|J^\top\lambda\|^2`
    (the Gramian :math:`J J^\top` of one batch is accepted but loses that guarantee). Each call
    makes one step

    .. math::

        \lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma (A\lambda + \rho\lambda)\big)

    from the stored λ (1/m at first) and returns it; :math:`\Pi_\Delta` is the Euclidean
    projection onto the simplex. The caller then backpropagates a third batch's losses with λ
    (see :class:`DoubleSampling`). The state (buffer ``weights``) is saved by ``state_dict``;
    :meth:`reset` goes back to 1/m, as does a change of m. A non-finite input gives NaN weights
    and leaves the state unchanged. Computed in float64 on the CPU. Not differentiable. From
    "Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
    Conflict-Avoidance" (Chen et al., NeurIPS 2023).

    Args:
        gamma: the step size :math:`\gamma > 0` of the weights.
        rho: the regularisation :math:`\rho \ge 0` of the weights.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import MoDoWeighting
        >>> weighting = MoDoWeighting(gamma=0.1)
        >>> cross = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> weighting(cross)
        tensor([0.4750, 0.5250])
        >>> weighting(cross)
        tensor([0.4540, 0.5460])
    """

    differentiable = False

    gamma = Checked(real(0.0, low_open=True))
    rho = Checked(real(0.0))

    weights: Tensor

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__()
        self.gamma = gamma
        self.rho = rho
        self._add_state("weights")

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        if m == 0:
            return gramian.new_zeros(0)
        cross = gramian.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(cross).all()):
            return gramian.new_full((m,), float("nan"))
        weights = load_simplex_state(self, "weights", m)
        step = self.gamma * (cross @ weights + self.rho * weights)
        weights = project_onto_simplex(weights - step)
        self._set_state("weights", weights.to(self._state("weights").device))
        return weights.to(device=gramian.device, dtype=gramian.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gamma={self.gamma!r}, rho={self.rho!r})"
