"""MGDA: the minimum-norm element of the convex hull of the rows of the Jacobian."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import check_non_negative


def _check_max_iters(max_iters: int) -> None:
    if not isinstance(max_iters, int) or isinstance(max_iters, bool):
        raise TypeError(f"`max_iters` must be an int, but got {type(max_iters).__name__}.")
    if max_iters < 1:
        raise ValueError(f"`max_iters` must be at least 1, but got {max_iters!r}.")


class MGDAWeighting(Weighting):
    r"""Weights of MGDA: :math:`\alpha = \arg\min_{\alpha \in \Delta} \alpha^\top G \alpha`,
    by Frank–Wolfe.

    Starting from :math:`\alpha = \frac{1}{m}\mathbb{1}`, each step picks the vertex
    :math:`t = \arg\min_i (G\alpha)_i` of the simplex :math:`\Delta` and moves towards it with the
    exact line search :math:`\gamma = \frac{b - a}{b + c - 2a}` clipped to :math:`[0, 1]`, where
    :math:`a = \alpha^\top G e_t`, :math:`b = \alpha^\top G \alpha`, :math:`c = G_{tt}`;
    it stops when :math:`\gamma <` ``epsilon`` or after ``max_iters`` steps. Computed in float64
    with torch operations, so the weights are differentiable with respect to the Gramian. From
    `Multi-Task Learning as Multi-Objective Optimization <https://arxiv.org/abs/1810.04650>`_
    (Sener & Koltun), after `Multiple-gradient descent algorithm (MGDA) for multiobjective
    optimization <https://doi.org/10.1016/j.crma.2012.03.014>`_ (Désidéri).

    Args:
        epsilon: the step size below which the iterations stop (``≥ 0``).
        max_iters: the maximum number of Frank–Wolfe steps (``≥ 1``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import MGDAWeighting
        >>> jacobian = torch.tensor([[-1.0, 1.0, 1.0], [3.0, 1.0, 1.0]])
        >>> MGDAWeighting()(jacobian @ jacobian.T)
        tensor([0.7500, 0.2500])
    """

    # The weights do not depend on the scale of the Gramian.
    gramian_rescaling = "any"

    def __init__(self, epsilon: float = 1e-3, max_iters: int = 100) -> None:
        super().__init__()
        check_non_negative("epsilon", epsilon)
        _check_max_iters(max_iters)
        self.epsilon = epsilon
        self.max_iters = max_iters

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        if m == 0:
            return gramian.new_zeros(0)
        gram = gramian.to(torch.float64)
        vertices = torch.eye(m, device=gram.device, dtype=gram.dtype)
        alpha = gram.new_full((m,), 1.0 / m)
        previous_vertex = -1
        for _ in range(self.max_iters):
            gram_alpha = gram @ alpha
            vertex = torch.argmin(gram_alpha)
            a = gram_alpha[vertex]
            b = alpha @ gram_alpha
            c = gram[vertex, vertex]
            # One host synchronisation per step, for the branch and the stopping test.
            step = torch.stack([vertex.to(gram.dtype), a, b, c]).detach().tolist()
            t, a_value, b_value, c_value = int(step[0]), step[1], step[2], step[3]
            if c_value <= a_value:
                if t == previous_vertex:
                    break  # α is already e_t: a fixed point, every further step keeps it.
                gamma: Tensor | float = 1.0
                gamma_value = 1.0
                previous_vertex = t
            elif b_value <= a_value:
                break  # γ = 0 leaves α unchanged.
            else:
                # Both differences are > 0 here, so the denominator cannot vanish.
                gamma = (b - a) / ((b - a) + (c - a))
                gamma_value = (b_value - a_value) / ((b_value - a_value) + (c_value - a_value))
                previous_vertex = -1
            alpha = (1 - gamma) * alpha + gamma * vertices[t]
            if gamma_value < self.epsilon:
                break
        return alpha.to(gramian.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon!r}, max_iters={self.max_iters!r})"


class MGDA(GramianWeightedAggregator):
    r"""Multiple Gradient Descent Algorithm: :math:`A(J) = J^\top \alpha` with ``α`` from
    :class:`MGDAWeighting`, the minimum-norm element of the convex hull of the rows.

    A non-zero output is a direction that decreases every objective: ``J · A(J) ≥ 0`` at the
    exact minimum (up to a tolerance set by ``epsilon``). It vanishes as soon as some convex
    combination of the rows does. Differentiable. From `Multi-Task Learning as Multi-Objective
    Optimization <https://arxiv.org/abs/1810.04650>`_ (Sener & Koltun), after Désidéri (2012).

    Args:
        epsilon: the Frank–Wolfe step size below which the iterations stop (``≥ 0``).
        max_iters: the maximum number of Frank–Wolfe steps (``≥ 1``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import MGDA
        >>> MGDA()(torch.tensor([[-1.0, 1.0, 1.0], [3.0, 1.0, 1.0]]))  # 0.75·g₁ + 0.25·g₂
        tensor([0., 1., 1.])
    """

    def __init__(self, epsilon: float = 1e-3, max_iters: int = 100) -> None:
        super().__init__(MGDAWeighting(epsilon, max_iters))

    def __repr__(self) -> str:
        weighting = cast(MGDAWeighting, self.gramian_weighting)
        return f"MGDA(epsilon={weighting.epsilon!r}, max_iters={weighting.max_iters!r})"
