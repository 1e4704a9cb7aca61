"""MoCo: multi-objective gradient correction with tracked per-task gradients."""

from __future__ import annotations

import torch
from torch import Tensor

from ._arguments import Checked, real
from ._bases import Aggregator
from ._simplex import project_onto_simplex
from ._state import StatefulModule


class MoCo(StatefulModule, Aggregator):
    r"""MoCo: tracked per-task gradients Y, combined with weights λ updated on the simplex.

    Each call (t counting the calls) moves the tracking variables towards the current
    Jacobian and makes one projected step on the weights:

    .. math::

        Y \leftarrow Y - \beta_t (Y - J), \qquad
        \lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma_t (Y Y^\top + \rho I)\lambda\big),

    with :math:`\beta_t = \beta / t^{\text{beta\_sigma}}`, :math:`\gamma_t = \gamma /
    t^{\text{gamma\_sigma}}`, Y starting at 0 and λ at 1/m; the output is :math:`Y^\top
    \lambda`. Tracking reduces the bias of the stochastic min-norm weights. The output is not a
    combination of the current rows, so MoCo has no Gramian form.

    The state (buffers ``tracked``, ``weights``, ``step``; one more Jacobian in memory) is
    saved by ``state_dict``; :meth:`reset` forgets it, as does a change of the shape of J. A
    non-finite J gives a NaN output and leaves the state unchanged (the step count counts
    finite calls only). Computed on J's device. Not differentiable. From "Mitigating Gradient
    Bias in Multi-objective Learning: A Provably Convergent Approach" (Fernando et al., ICLR
    2023).

    Args:
        beta: the tracking rate :math:`\beta \in (0, 1]`.
        beta_sigma: its decay exponent (``≥ 0``).
        gamma: the step size :math:`\gamma > 0` of the weights.
        gamma_sigma: its decay exponent (``≥ 0``).
        rho: the regularisation :math:`\rho \ge 0` of the weights.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import MoCo
        >>> MoCo()(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
        tensor([0.6750, 0.2750])
    """

    differentiable = False

    beta = Checked(real(0.0, 1.0, low_open=True))
    beta_sigma = Checked(real(0.0))
    gamma = Checked(real(0.0, low_open=True))
    gamma_sigma = Checked(real(0.0))
    rho = Checked(real(0.0))

    tracked: Tensor
    weights: Tensor
    step: Tensor

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
    ) -> None:
        super().__init__()
        self.beta = beta
        self.beta_sigma = beta_sigma
        self.gamma = gamma
        self.gamma_sigma = gamma_sigma
        self.rho = rho
        self._add_state("tracked")
        self._add_state("weights")
        self._add_state("step", torch.int64)

    def forward(self, matrix: Tensor, /) -> Tensor:
        jacobian = matrix.detach()
        m = jacobian.shape[0]
        if m == 0:
            return matrix.new_zeros(matrix.shape[1:])
        tracked = self._state("tracked")
        fresh = tracked.shape != jacobian.shape
        tracked = jacobian.new_zeros(jacobian.shape) if fresh else tracked.to(jacobian)
        weights = jacobian.new_full((m,), 1.0 / m) if fresh else self._state("weights").to(jacobian)
        step = 1 if fresh else int(self._state("step")) + 1
        tracked = tracked - self.beta / step**self.beta_sigma * (tracked - jacobian)
        gramian = tracked @ tracked.T
        if not bool(torch.isfinite(gramian.diagonal()).all()):
            return matrix.new_full(matrix.shape[1:], float("nan"))
        gamma = self.gamma / step**self.gamma_sigma
        weights = project_onto_simplex(weights - gamma * (gramian @ weights + self.rho * weights))
        self._set_state("tracked", tracked)
        self._set_state("weights", weights)
        self._set_state("step", torch.tensor(step, device=jacobian.device))
        output: Tensor = weights @ tracked
        return output

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(beta={self.beta!r}, beta_sigma={self.beta_sigma!r}, "
            f"gamma={self.gamma!r}, gamma_sigma={self.gamma_sigma!r}, rho={self.rho!r})"
        )
