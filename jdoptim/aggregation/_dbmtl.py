"""DB-MTL: dual balancing of the loss scales and of the gradient magnitudes."""

from __future__ import annotations

import torch
from torch import Tensor

from ._arguments import Checked, real
from ._bases import Aggregator, Weighting
from ._state import StatefulModule

_EPS = 1e-8


def _check_losses_are_non_negative(losses: Tensor) -> None:
    if bool((losses < 0).any()):
        raise ValueError(
            f"`losses` must be non-negative (their logarithms are balanced), but got "
            f"{losses.tolist()!r}."
        )


def _balance(norms: Tensor) -> Tensor:
    """The factors that scale every row of norm ``norms`` to the largest norm."""
    return norms.max() / (norms + _EPS)


class DBMTL(StatefulModule, Aggregator):
    r"""DB-MTL: gradients of the log-losses, averaged over time and scaled to the largest norm.

    Reads the Jacobian J and the loss values ℓ (``requires_losses``: call it as
    ``aggregator(matrix, losses=losses)``). The rows :math:`\hat g_i = g_i / (\ell_i +
    10^{-8})` are the gradients of :math:`\log(\ell_i + 10^{-8})` (loss-scale balancing); they
    are averaged over the calls, :math:`B \leftarrow (1 - \beta_t)\hat J + \beta_t B` with
    :math:`\beta_t = \beta / t^{\text{beta\_sigma}}` (t the number of calls, no bias
    correction), and each averaged row is scaled to the largest norm (gradient-magnitude
    balancing): the output is :math:`\sum_i a_i B_i` with :math:`a_i = \max_j \|B_j\| /
    (\|B_i\| + 10^{-8})`. Because it averages past gradients, the output is not a combination
    of the rows of the current J when β > 0 (:class:`DBMTLWeighting` is the case β = 0).

    The state (buffers ``average`` and ``step``) is saved by ``state_dict``; :meth:`reset`
    forgets it, as does a change of the shape of J. A non-finite J or ℓ gives a NaN output and
    leaves the state unchanged (the step count counts finite calls only). Not differentiable.
    From "Dual-Balancing for Multi-Task Learning" (Lin et al., 2023).

    Args:
        beta: the weight :math:`\beta \in [0, 1)` of the past average.
        beta_sigma: the decay exponent of :math:`\beta_t` (``≥ 0``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import DBMTL
        >>> aggregator = DBMTL(beta=0.0)
        >>> matrix = torch.tensor([[3.0, 1.0], [0.0, 1.0]])
        >>> aggregator(matrix, losses=torch.tensor([2.0, 0.5]))
        tensor([1.8974, 2.6325])
    """

    differentiable = False
    requires_losses = True

    beta = Checked(real(0.0, 1.0, high_open=True))
    beta_sigma = Checked(real(0.0))

    average: Tensor
    step: Tensor

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__()
        self.beta = beta
        self.beta_sigma = beta_sigma
        self._add_state("average")
        self._add_state("step", torch.int64)

    def forward(self, matrix: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
        assert losses is not None  # The base class checks that the losses were given.
        jacobian = matrix.detach()
        if jacobian.shape[0] == 0:
            return matrix.new_zeros(matrix.shape[1:])
        if bool(torch.isfinite(losses).all()):
            _check_losses_are_non_negative(losses)
        average = self._state("average")
        fresh = average.shape != jacobian.shape
        average = jacobian.new_zeros(jacobian.shape) if fresh else average.to(jacobian)
        step = 1 if fresh else int(self._state("step")) + 1
        scaled = jacobian / (losses + _EPS).unsqueeze(1)
        beta = self.beta / step**self.beta_sigma
        average = (1.0 - beta) * scaled + beta * average
        norms = torch.linalg.vector_norm(average, dim=1)
        if not bool(torch.isfinite(norms).all() & torch.isfinite(losses).all()):
            return matrix.new_full(matrix.shape[1:], float("nan"))
        self._set_state("average", average)
        self._set_state("step", torch.tensor(step, device=jacobian.device))
        output: Tensor = _balance(norms) @ average
        return output

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta!r}, beta_sigma={self.beta_sigma!r})"


class DBMTLWeighting(Weighting):
    r"""Weights of memoryless DB-MTL (``DBMTL(beta=0)``) from the Gramian and the loss values.

    With :math:`u_i = \sqrt{G_{ii}} / (\ell_i + 10^{-8})` the norm of the gradient of
    :math:`\log(\ell_i + 10^{-8})`, the weights are :math:`w_i = a_i / (\ell_i + 10^{-8})`,
    :math:`a_i = \max_j u_j / (u_i + 10^{-8})`: every log-loss gradient scaled to the largest
    norm. Call it as ``weighting(gramian, losses=losses)`` (``requires_losses``); negative
    losses raise ``ValueError``, non-finite input gives NaN weights. Not differentiable. From
    "Dual-Balancing for Multi-Task Learning" (Lin et al., 2023).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import DBMTLWeighting
        >>> matrix = torch.tensor([[3.0, 1.0], [0.0, 1.0]])
        >>> DBMTLWeighting()(matrix @ matrix.T, losses=torch.tensor([2.0, 0.5]))
        tensor([0.6325, 2.0000])
    """

    differentiable = False
    requires_losses = True

    def forward(self, gramian: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
        assert losses is not None  # The base class checks that the losses were given.
        gramian = gramian.detach()
        if gramian.shape[0] == 0:
            return gramian.new_zeros(0)
        if bool(torch.isfinite(losses).all()):
            _check_losses_are_non_negative(losses)
        inverse = 1.0 / (losses + _EPS)
        norms = gramian.diagonal().clamp(min=0.0).sqrt() * inverse
        if not bool(torch.isfinite(norms).all() & torch.isfinite(gramian).all()):
            return gramian.new_full(losses.shape, float("nan"))
        return _balance(norms) * inverse
