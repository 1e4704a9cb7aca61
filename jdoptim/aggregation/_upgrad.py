"""UPGrad: project each row onto the dual cone of the rows, then average the projections."""

from __future__ import annotations

import torch
from torch import Tensor

from ._dual_cone import DEFAULT_SOLVER, solve_dual_cone
from ._dual_cone_weighting import DualConeAggregator, DualConeWeighting


class UPGradWeighting(DualConeWeighting):
    r"""Weights of UPGrad: :math:`w = \sum_i v_i` with
    :math:`v_i = \arg\min_{v \geq p_i e_i} v^\top \hat G v`.

    With :math:`\hat G = N(G) + \varepsilon_{reg} I`, where :math:`N(G) = G / \operatorname{tr}(G)`
    when :math:`\operatorname{tr}(G) \geq \varepsilon_{norm}` and :math:`0` otherwise. For
    ``G = J Jᵀ``, :math:`J^\top v_i` is the projection of :math:`p_i g_i` onto the dual cone of
    the rows :math:`g_1, …, g_m` of ``J``, so :math:`J^\top w` conflicts with none of them (up to
    the tolerance below). A (nearly) zero Gramian gives :math:`w = p`. The ``m`` QPs are solved
    in one call of the dual-cone solver. From `Jacobian Descent for Multi-Objective Optimization
    <https://arxiv.org/abs/2406.16232>`_ (Quinton & Rey).

    **Tolerance.** The regularisation makes the result conflict a little with objectives on
    which the exact projection is tight: :math:`(J A(J))_i = (G w)_i \geq -\varepsilon_{reg}
    \operatorname{tr}(G)\, w_i` for every objective ``i`` (so ``J @ A(J)`` may have negative
    entries, typically with more objectives than parameters). ``reg_eps=0`` gives exact
    non-conflict, :math:`(G w)_i \geq -4.5 \cdot 10^{-10} \lVert g_i \rVert \sum_j \lVert
    g_j \rVert w_j` in float64, also for singular Gramians, at some cost in time; see
    :ref:`dual-cone-tolerance`.

    Not differentiable: backpropagating through the weights raises
    :class:`~jdoptim.aggregation.NonDifferentiableError`.

    Args:
        pref_vector: ``[m]`` preference vector ``p``; ``None`` means uniform ``1/m``.
        norm_eps: the trace below which the Gramian is treated as zero (``≥ 0``).
        reg_eps: the multiple of the identity added to the normalised Gramian (``≥ 0``).
        solver: the QP solver, ``"auto"`` (default), ``"quadprog"`` or ``"torch"``; see
            :ref:`dual-cone-solver`.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import UPGradWeighting
        >>> jacobian = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
        >>> UPGradWeighting()(jacobian @ jacobian.T)
        tensor([1.1109, 0.7894])
    """

    def forward(self, gramian: Tensor, /) -> Tensor:
        pref_vector = self.resolve_pref_vector(gramian)
        regularized = self.regularize(gramian)
        at_bounds = self.solved_at_bounds(regularized, pref_vector, each=True)
        projections = solve_dual_cone(
            regularized, torch.diag(pref_vector), self.solver, at_bounds=at_bounds
        )
        return projections.sum(dim=0)


class UPGrad(DualConeAggregator):
    r"""Unconflicting Projection of Gradients: :math:`A(J) = J^\top w` with ``w`` from
    :class:`UPGradWeighting`.

    Each row :math:`g_i` of the Jacobian is projected onto the dual cone of the rows (the vectors
    :math:`x` with :math:`J x \geq 0`), and the projections are averaged with the weights of
    ``pref_vector``: the result conflicts with no objective, up to a tolerance set by ``reg_eps``.
    The projections are QPs on the ``[m, m]`` Gramian ``J Jᵀ``, normalised by its trace
    (guarded by ``norm_eps``) and regularised by ``reg_eps · I``. From `Jacobian Descent for
    Multi-Objective Optimization <https://arxiv.org/abs/2406.16232>`_ (Quinton & Rey).

    **Tolerance.** The regularisation makes the result conflict a little with objectives on
    which the exact projection is tight: :math:`(J A(J))_i = (G w)_i \geq -\varepsilon_{reg}
    \operatorname{tr}(G)\, w_i` for every objective ``i`` (so ``J @ A(J)`` may have negative
    entries, typically with more objectives than parameters). ``reg_eps=0`` gives exact
    non-conflict, :math:`(G w)_i \geq -4.5 \cdot 10^{-10} \lVert g_i \rVert \sum_j \lVert
    g_j \rVert w_j` in float64, also for singular Gramians, at some cost in time; see
    :ref:`dual-cone-tolerance`.

    Not differentiable: backpropagating through the output raises
    :class:`~jdoptim.aggregation.NonDifferentiableError`.

    Args:
        pref_vector: ``[m]`` preference vector; ``None`` means uniform ``1/m``.
        norm_eps: the trace below which the Gramian is treated as zero (``≥ 0``).
        reg_eps: the multiple of the identity added to the normalised Gramian (``≥ 0``).
        solver: the QP solver, ``"auto"`` (default), ``"quadprog"`` or ``"torch"``; see
            :ref:`dual-cone-solver`.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import UPGrad
        >>> UPGrad()(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])).round(decimals=3)
        tensor([0.2930, 1.9000, 1.9000])
    """

    def __init__(
        self,
        pref_vector: Tensor | None = None,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        solver: str = DEFAULT_SOLVER,
    ) -> None:
        super().__init__(UPGradWeighting(pref_vector, norm_eps, reg_eps, solver))
