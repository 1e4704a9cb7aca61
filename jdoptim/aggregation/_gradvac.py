"""GradVac: gradient vaccine, raising pairwise cosine similarities towards running targets."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._arguments import Checked, Forwarded, real
from ._bases import GramianWeightedAggregator, Weighting
from ._state import StatefulModule


def _positive_sqrt(value: float) -> float:
    return math.sqrt(max(value, 0.0))


class GradVacWeighting(StatefulModule, Weighting):
    r"""Weights of GradVac, computed on the Gramian, with running cosine targets as state.

    Each row i starts as :math:`\tilde g_i = g_i` and visits the other rows j in a random order
    (one ``torch.randperm`` per row and call, from torch's default CPU generator, so
    ``torch.manual_seed`` makes it reproducible). With :math:`\varphi` the cosine between
    :math:`\tilde g_i` and :math:`g_j` and :math:`t = \hat\Phi_{ij}` the target: if
    :math:`\varphi < t`, :math:`\tilde g_i` gets :math:`g_j` added with the coefficient

    .. math::

        \frac{\|\tilde g_i\| \left(t\sqrt{1-\varphi^2} - \varphi\sqrt{1-t^2}\right)}
        {\|g_j\| \sqrt{1 - t^2} + \text{eps}},

    which raises the cosine to t; then in every case :math:`\hat\Phi_{ij} \leftarrow (1 -
    \beta) t + \beta\varphi`. The weights are the sums of the coefficients, so
    :math:`J^\top w = \sum_i \tilde g_i`. Targets start at 0 (so only conflicting pairs are
    corrected at first). The targets (buffer ``targets``) are saved by ``state_dict``;
    :meth:`reset` forgets them, as does a change of m. A non-finite Gramian gives NaN weights,
    with no random draw and the targets unchanged. Computed in float64 on the CPU. Not
    differentiable. From "Gradient Vaccine: Investigating and Improving Multi-task Optimization
    in Massively Multilingual Models" (Wang et al., ICLR 2021), on the whole parameter vector.

    Args:
        beta: the rate :math:`\beta \in [0, 1]` of the moving average of the cosines.
        eps: added to the denominators (``≥ 0``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import GradVacWeighting
        >>> matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
        >>> GradVacWeighting()(matrix @ matrix.T)
        tensor([2.0000, 1.5000])
    """

    differentiable = False

    beta = Checked(real(0.0, 1.0))
    eps = Checked(real(0.0))

    targets: Tensor

    def __init__(self, beta: float = 0.5, eps: float = 1e-8) -> None:
        super().__init__()
        self.beta = beta
        self.eps = eps
        self._add_state("targets")

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        if m == 0:
            return gramian.new_zeros(0)
        matrix = gramian.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(matrix).all()):
            return gramian.new_full((m,), float("nan"))
        targets = self._state("targets").to("cpu", torch.float64)
        targets = torch.zeros(m, m, dtype=torch.float64) if targets.shape != (m, m) else targets
        targets = targets.clone()
        gram = matrix.numpy()
        target_rows = targets.numpy()
        coefficients = np.eye(m)
        norms = [_positive_sqrt(float(gram[j, j])) for j in range(m)]
        for i in range(m):
            others = [j for j in range(m) if j != i]
            order = torch.randperm(m - 1).tolist()
            row = coefficients[i]
            for position in order:
                j = others[position]
                products = row @ gram
                norm_i = _positive_sqrt(float(products @ row))
                denominator = norm_i * norms[j] + self.eps
                cosine = float(products[j]) / denominator if denominator != 0 else 0.0
                target = float(target_rows[i, j])
                if cosine < target:
                    room = _positive_sqrt(1.0 - target**2)
                    bottom = norms[j] * room + self.eps
                    if bottom != 0:
                        top = target * _positive_sqrt(1.0 - cosine**2) - cosine * room
                        row[j] += norm_i * top / bottom
                target_rows[i, j] = (1.0 - self.beta) * target + self.beta * cosine
        device = self._state("targets").device
        self._set_state("targets", torch.from_numpy(target_rows).to(device))
        weights = torch.from_numpy(coefficients.sum(axis=0))
        return weights.to(device=gramian.device, dtype=gramian.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta!r}, eps={self.eps!r})"


class GradVac(GramianWeightedAggregator):
    r"""Gradient vaccine: :math:`A(J) = J^\top w`, w from :class:`GradVacWeighting`.

    Each gradient is corrected towards each other one, in a random order, until their cosine
    similarity reaches a running target (initially 0, then a moving average of the cosines
    seen); the output is the sum of the corrected gradients. Stateful (the targets; :meth:`reset`);
    draws from torch's CPU generator. Not differentiable. From "Gradient Vaccine" (Wang et al.,
    ICLR 2021).

    Args:
        beta: the rate of the moving average of the cosines, in ``[0, 1]``.
        eps: added to the denominators (``≥ 0``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import GradVac
        >>> GradVac()(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
        tensor([0.5000, 1.5000])
    """

    differentiable = False

    gramian_weighting: GradVacWeighting

    beta = Forwarded()
    eps = Forwarded()

    def __init__(self, beta: float = 0.5, eps: float = 1e-8) -> None:
        super().__init__(GradVacWeighting(beta, eps))

    def __repr__(self) -> str:
        weighting = self.gramian_weighting
        return f"{type(self).__name__}(beta={weighting.beta!r}, eps={weighting.eps!r})"
