"""CR-MOGM: a moving average of the weights of another weighting."""

from __future__ import annotations

import torch
from torch import Tensor

from .._describe import describe
from ._arguments import Checked, real, vector
from ._bases import Weighting
from ._state import StatefulModule


class CRMOGMWeighting(StatefulModule, Weighting):
    r"""Exponential moving average of the weights of ``weighting``, across calls.

    With :math:`\hat\lambda` the weights that ``weighting`` gives for the current statistic and
    :math:`\lambda` the stored average (at the first call: ``initial_weights`` if given, else
    :math:`\hat\lambda`), each call stores and returns

    .. math::

        \lambda \leftarrow \alpha \lambda + (1 - \alpha)\hat\lambda.

    Averaging weights computed from stochastic gradients is what makes the stochastic
    multi-objective methods converge; the paper lets :math:`\alpha_k \to 1` as the step sizes
    decay, e.g. :math:`\alpha_k = 1 - \text{lr}_k/\text{lr}_0` (``alpha`` is a settable
    attribute: update it with your LR scheduler). ``alpha = 0`` returns :math:`\hat\lambda`;
    ``alpha = 1`` keeps the first weights forever.

    Its statistic and loss values are those of ``weighting``. Differentiable exactly when
    ``weighting`` is: gradients flow through the current :math:`\hat\lambda` only (times
    :math:`1 - \alpha`); the stored average is detached. The average (buffer ``weights``) is
    saved by ``state_dict``; :meth:`reset` forgets it and resets ``weighting``. A call with
    another number of objectives than the stored average raises ``ValueError`` until
    :meth:`reset`. Non-finite weights from ``weighting`` give NaN weights and leave the state
    unchanged. From "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and
    Beyond" (Zhou et al., NeurIPS 2022).

    Args:
        weighting: the weighting whose weights are averaged.
        alpha: the weight :math:`\alpha \in [0, 1]` of the previous average.
        initial_weights: the average before the first call (1-D, length m), or ``None``.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import CRMOGMWeighting, GramianWeightedAggregator
        >>> from jdoptim.aggregation import MGDAWeighting
        >>> weighting = CRMOGMWeighting(MGDAWeighting(), alpha=0.5)
        >>> aggregator = GramianWeightedAggregator(weighting)
        >>> aggregator(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
        tensor([0.9000, 0.3000])
        >>> aggregator(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
        tensor([1.5000, 0.5000])
    """

    alpha = Checked(real(0.0, 1.0))
    initial_weights = Checked(vector())

    weights: Tensor

    def __init__(
        self, weighting: Weighting, alpha: float = 0.9, initial_weights: Tensor | None = None
    ) -> None:
        super().__init__()
        if not isinstance(weighting, Weighting):
            raise TypeError(
                "`weighting` must be a jdoptim.aggregation.Weighting, but got "
                f"{describe(weighting)}."
            )
        self.weighting = weighting
        self.alpha = alpha
        self.initial_weights = initial_weights
        self._add_state("weights")

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """Whether gradients may flow through the weights: those of the inner weighting."""
        return self.weighting.differentiable

    @property
    def requires_losses(self) -> bool:  # type: ignore[override]
        """Whether the inner weighting reads the loss values."""
        return self.weighting.requires_losses

    def _reads_jacobian(self) -> bool:
        return self.weighting._reads_jacobian()

    def _check_statistic(self, stat: Tensor) -> None:
        self.weighting._check_statistic(stat)

    def forward(self, gramian: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
        m = gramian.shape[0]
        stored = self._state("weights")
        # Checked before the inner weighting runs, so that its state is left untouched too.
        if stored.shape[0] not in (0, m):
            raise ValueError(
                f"CRMOGMWeighting holds the average of {stored.shape[0]} weights but got a "
                f"statistic with m = {m} objectives: call reset() before changing m."
            )
        if losses is None:
            current = self.weighting(gramian)
        else:
            current = self.weighting(gramian, losses=losses)
        if not bool(torch.isfinite(current).all()):
            return torch.full_like(current, float("nan"))
        if stored.shape[0] == m:
            previous = stored.to(device=current.device, dtype=current.dtype)
        elif self.initial_weights is not None:
            initial = self.initial_weights
            if initial.shape[0] != m:
                raise ValueError(
                    f"`initial_weights` must have {m} entries (one per objective of the input), "
                    f"but got shape {list(initial.shape)}."
                )
            previous = initial.to(device=current.device, dtype=current.dtype)
        else:
            previous = current.detach()
        average = self.alpha * previous + (1.0 - self.alpha) * current
        self._set_state("weights", average.to(stored.device))
        return average

    def __repr__(self) -> str:
        initial = None if self.initial_weights is None else self.initial_weights.tolist()
        return (
            f"{type(self).__name__}({self.weighting!r}, alpha={self.alpha!r}, "
            f"initial_weights={initial!r})"
        )

    def __str__(self) -> str:
        return f"CRMOGMWeighting({self.weighting})"
