"""PCGrad: gradient surgery, projecting each gradient away from those it conflicts with."""

from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting


class PCGradWeighting(Weighting):
    r"""Weights of PCGrad, computed on the Gramian :math:`G` only.

    For each row i, start from :math:`c = e_i` (so that :math:`J^\top c = g_i`) and visit the
    other rows j in a random order; whenever :math:`(G c)_j < 0` (the projected gradient
    conflicts with :math:`g_j`), project it onto the normal plane of :math:`g_j`:
    :math:`c_j \leftarrow c_j - (G c)_j / G_{jj}`. The weights are :math:`w = \sum_i c`, so
    :math:`J^\top w` is the sum of the projected gradients. Projections are always made on the
    original gradients, as in the paper. Rows with :math:`G_{jj} = 0` are never projected on.

    Each row gets its own random order, drawn with torch's global CPU random number generator,
    so ``torch.manual_seed`` makes the result reproducible. From "Gradient Surgery for Multi-Task
    Learning" (Yu et al., NeurIPS 2020).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import PCGradWeighting
        >>> matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
        >>> PCGradWeighting()(matrix @ matrix.T)
        tensor([2.0000, 1.5000])
    """

    # The weights do not depend on the scale of the Gramian.
    gramian_rescaling = "any"

    differentiable = False

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        # orders[i] is a random permutation of the rows other than i: its own index sorts last.
        keys = torch.rand(m, m).fill_diagonal_(2.0)
        orders = keys.argsort(dim=1)[:, : m - 1].to(gramian.device)
        rows = torch.arange(m, device=gramian.device)
        coefficients = torch.eye(m, device=gramian.device, dtype=gramian.dtype)
        diagonal = gramian.diagonal()
        safe_diagonal = torch.where(diagonal > 0, diagonal, torch.ones_like(diagonal))
        for step in range(m - 1):
            others = orders[:, step]
            # inner[i] = g_others[i] · (J^T c_i), the scalar product with the row visited by i.
            inner = (gramian[others] * coefficients).sum(dim=1)
            correction = inner.clamp(max=0.0) / safe_diagonal[others]
            correction = torch.where(diagonal[others] > 0, correction, torch.zeros_like(inner))
            coefficients[rows, others] -= correction
        return coefficients.sum(dim=0)


class PCGrad(GramianWeightedAggregator):
    r"""Sum of the gradients after projecting each one away from those it conflicts with.

    For each row :math:`g_i`, in a random order of the other rows :math:`g_j`:
    :math:`g_i^{PC} \leftarrow g_i^{PC} - \frac{\min(g_i^{PC} \cdot g_j, 0)}{\|g_j\|^2} g_j`,
    starting from :math:`g_i^{PC} = g_i`; the output is :math:`\sum_i g_i^{PC}`. Computed on the
    Gramian by :class:`PCGradWeighting`. Uses torch's global random number generator
    (reproducible under ``torch.manual_seed``). Not differentiable. From "Gradient Surgery for
    Multi-Task Learning" (Yu et al., NeurIPS 2020).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import PCGrad
        >>> PCGrad()(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
        tensor([0.5000, 1.5000])
    """

    differentiable = False

    def __init__(self) -> None:
        super().__init__(PCGradWeighting())
