"""SDMGrad: stochastic direction-oriented multi-objective gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from ._arguments import Checked, check_length, integer, real, vector
from ._bases import Weighting
from ._modo import load_simplex_state
from ._simplex import project_onto_simplex
from ._state import StatefulModule


class SDMGradWeighting(StatefulModule, Weighting):
    r"""Weights of SDMGrad: a direction near the preferred one that improves every objective.

    The statistic is a cross matrix :math:`A = J_1 J_2^\top` ``[m, m]`` of two independent
    mini-batches; the weights are meant for a third one (see :class:`DoubleSampling`). With
    :math:`c` the mean of :math:`\sqrt{\max(A_{ii}, 0)}`, :math:`\hat A = A / (c^2 + 10^{-8})`
    and :math:`\tilde w` the preference vector (default 1/m), each call runs ``n_iter`` steps
    of projected gradient descent with momentum on the simplex, warm-started from the stored
    w (1/m at first):

    .. math::

        g = \hat A (w + \lambda \tilde w), \quad v \leftarrow \text{momentum} \cdot v + g, \quad
        w \leftarrow \Pi_\Delta(w - \text{lr} \cdot v),

    (v = g on the first step; the momentum is not kept across calls), stores w and returns
    :math:`(w + \lambda\tilde w)/(1 + \lambda)`. The state (buffer ``weights``) is saved by
    ``state_dict``; :meth:`reset` goes back to 1/m, as does a change of m. A non-finite input
    gives NaN weights and leaves the state unchanged. Computed in float64 on the CPU. Not
    differentiable. From "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms" (Xiao, Ban & Ji, NeurIPS 2023).

    Args:
        lr: the step size of the inner loop (``> 0``).
        momentum: its momentum, in ``[0, 1)``.
        n_iter: the number of inner steps per call (``≥ 1``).
        lambda_: the weight :math:`\lambda \ge 0` of the preferred direction.
        pref_vector: the preferred weights :math:`\tilde w` (1-D, length m); ``None``: 1/m.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import SDMGradWeighting
        >>> cross = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
        >>> SDMGradWeighting(lr=0.1, n_iter=1)(cross)
        tensor([0.4667, 0.5333])
    """

    differentiable = False

    lr = Checked(real(0.0, low_open=True))
    momentum = Checked(real(0.0, 1.0, high_open=True))
    n_iter = Checked(integer(1))
    lambda_ = Checked(real(0.0))
    pref_vector = Checked(vector())

    weights: Tensor

    def __init__(
        self,
        lr: float = 10.0,
        momentum: float = 0.5,
        n_iter: int = 20,
        lambda_: float = 0.3,
        pref_vector: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.lr = lr
        self.momentum = momentum
        self.n_iter = n_iter
        self.lambda_ = lambda_
        self.pref_vector = pref_vector
        self._add_state("weights")

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        if m == 0:
            return gramian.new_zeros(0)
        preference = self.pref_vector
        if preference is None:
            preference = torch.full((m,), 1.0 / m, dtype=torch.float64)
        else:
            check_length(preference, "pref_vector", m)
            preference = preference.to("cpu", torch.float64)
        cross = gramian.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(cross).all()):
            return gramian.new_full((m,), float("nan"))
        scale = cross.diagonal().clamp(min=0.0).sqrt().mean()
        normalised = cross / (scale**2 + 1e-8)
        weights = load_simplex_state(self, "weights", m)
        velocity = torch.zeros(m, dtype=torch.float64)
        for iteration in range(self.n_iter):
            gradient = normalised @ (weights + self.lambda_ * preference)
            velocity = gradient if iteration == 0 else self.momentum * velocity + gradient
            weights = project_onto_simplex(weights - self.lr * velocity)
        self._set_state("weights", weights.to(self._state("weights").device))
        result = (weights + self.lambda_ * preference) / (1.0 + self.lambda_)
        return result.to(device=gramian.device, dtype=gramian.dtype)

    def __repr__(self) -> str:
        preference = None if self.pref_vector is None else self.pref_vector.tolist()
        return (
            f"{type(self).__name__}(lr={self.lr!r}, momentum={self.momentum!r}, "
            f"n_iter={self.n_iter!r}, lambda_={self.lambda_!r}, pref_vector={preference!r})"
        )
