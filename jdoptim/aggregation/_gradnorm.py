"""GradNorm: weights that balance the weighted gradient norms by the training rates."""

from __future__ import annotations

import torch
from torch import Tensor

from ._arguments import Checked, real
from ._bases import Weighting
from ._state import StatefulModule


class GradNormWeighting(StatefulModule, Weighting):
    r"""Weights of GradNorm, learnt across calls from the gradient norms and the loss values.

    The returned weights are :math:`w = m \cdot \operatorname{softmax}(\theta)` (all 1 at the
    start, always positive, summing to m). After computing them, each call makes one gradient
    step on θ for the next call: with :math:`n_i = w_i\sqrt{G_{ii}}` the weighted gradient
    norms, :math:`N` their mean, :math:`r_i = \rho_i / \operatorname{mean}(\rho)` the relative
    training rates (:math:`\rho_i = \ell_i / \ell^0_i`, ℓ⁰ the losses of the first call) and the
    targets :math:`T_i = N r_i^\alpha` held constant,

    .. math::

        \theta \leftarrow \theta - \text{lr} \cdot \nabla_\theta \frac{1}{N}\sum_i |n_i - T_i|,

    (no step when N = 0). Dividing by N makes ``lr`` independent of the gradients' scale. Give
    it the Gramian of the last shared layer (e.g. its own parameter group), as in the paper.

    Call it as ``weighting(gramian, losses=losses)`` (``requires_losses``); negative losses
    raise ``ValueError``. The state (buffers ``logits``, ``initial_losses``, ``step``) is saved
    by ``state_dict``; :meth:`reset` forgets it, as does a change of m. A non-finite input gives
    NaN weights and leaves the state unchanged. Not differentiable. From "GradNorm: Gradient
    Normalization for Adaptive Loss Balancing in Deep Multitask Networks" (Chen et al., ICML
    2018).

    Args:
        alpha: the strength :math:`\alpha \ge 0` of the pull towards equal training rates.
        lr: the step size of θ (``> 0``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import GradNormWeighting
        >>> weighting = GradNormWeighting(lr=0.5)
        >>> gramian = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
        >>> weighting(gramian, losses=torch.tensor([1.0, 1.0]))
        tensor([1., 1.])
        >>> weighting(gramian, losses=torch.tensor([1.0, 1.0]))
        tensor([0.5379, 1.4621])
    """

    differentiable = False
    requires_losses = True

    alpha = Checked(real(0.0))
    lr = Checked(real(0.0, low_open=True))

    logits: Tensor
    initial_losses: Tensor
    step: Tensor

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__()
        self.alpha = alpha
        self.lr = lr
        self._add_state("logits")
        self._add_state("initial_losses")
        self._add_state("step", torch.int64)

    def forward(self, gramian: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
        assert losses is not None  # The base class checks that the losses were given.
        m = gramian.shape[0]
        if m == 0:
            return gramian.new_zeros(0)
        squared_norms = gramian.detach().diagonal().to("cpu", torch.float64)
        loss_values = losses.to("cpu", torch.float64)
        if not bool(torch.isfinite(squared_norms).all() & torch.isfinite(loss_values).all()):
            return gramian.new_full((m,), float("nan"))
        if bool((loss_values < 0).any()):
            raise ValueError(f"`losses` must be non-negative, but got {loss_values.tolist()!r}.")
        logits = self._state("logits").to("cpu", torch.float64)
        fresh = logits.shape != (m,)
        logits = torch.zeros(m, dtype=torch.float64) if fresh else logits
        initial = loss_values if fresh else self._state("initial_losses").to("cpu", torch.float64)
        step = 0 if fresh else int(self._state("step"))
        weights = m * torch.softmax(logits, dim=0)
        norms = weights * squared_norms.clamp(min=0.0).sqrt()
        mean_norm = float(norms.mean())
        if mean_norm > 0:
            started = initial > 0
            rates = torch.where(started, loss_values / torch.where(started, initial, 1.0), 1.0)
            mean_rate = float(rates.mean())
            relative = rates / mean_rate if mean_rate > 0 else torch.ones_like(rates)
            targets = mean_norm * relative**self.alpha
            signs = torch.sign(norms - targets)
            signed = signs * norms
            gradient = (signed - weights / m * signed.sum()) / mean_norm
            logits = logits - self.lr * gradient
        device = self._state("logits").device
        self._set_state("logits", logits.to(device))
        self._set_state("initial_losses", initial.to(device))
        self._set_state("step", torch.tensor(step + 1, device=device))
        return weights.to(device=gramian.device, dtype=gramian.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha!r}, lr={self.lr!r})"
