"""Double sampling: weights from two mini-batches, applied to a third (or to both)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._describe import describe
from ._bases import GeneralizedWeighting, Weighting, reset_state

_UPDATES = {"third": 3, "mean": 2}


class DoubleSampling(GeneralizedWeighting):
    r"""Runs a double-sampling weighting (MoDo, SDMGrad) on ``k`` stacked mini-batches.

    The losses have shape ``[k, m]``: k mini-batches (stacked from one forward pass over their
    concatenation) times m objectives, and their generalized Gramian has shape
    ``[k, m, m, k]``. ``weighting`` is called on the cross block :math:`A = J_1 J_2^\top`
    ``[m, m]`` of the first two mini-batches (entry ``[0, i, j, 1]``: the product of objective
    i's gradient on batch 1 with objective j's on batch 2), and its weights λ ``[m]`` are
    placed on the batch that makes the update:

    - ``update="third"`` (k = 3): row 3 gets λ, rows 1 and 2 get 0 — the update is
      :math:`J_3^\top \lambda`, independent of the batches that chose λ;
    - ``update="mean"`` (k = 2): rows 1 and 2 both get λ/2 — the update is
      :math:`\frac12(J_1 + J_2)^\top \lambda`.

    Use it with :class:`jdoptim.autogram.Engine` (``batch_dim=None``): compute the Gramian of
    the ``[k, m]`` losses, call this weighting, then ``losses.backward(weights)``. Its state
    is the wrapped weighting's; :meth:`reset` resets it.

    Args:
        weighting: the weighting of the cross matrix, e.g. :class:`MoDoWeighting` or
            :class:`SDMGradWeighting`.
        update: ``"third"`` or ``"mean"``, which mini-batch(es) the weights apply to.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import DoubleSampling, MoDoWeighting
        >>> jacobians = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).repeat(3, 1, 1)  # [k, m, n]
        >>> gramian = torch.einsum("aip,bjp->aijb", jacobians, jacobians)  # [k, m, m, k]
        >>> DoubleSampling(MoDoWeighting())(gramian)
        tensor([[0.0000, 0.0000],
                [0.0000, 0.0000],
                [0.5000, 0.5000]])
    """

    def __init__(self, weighting: Weighting, update: str = "third") -> None:
        super().__init__()
        if not isinstance(weighting, Weighting):
            raise TypeError(
                "`weighting` must be a jdoptim.aggregation.Weighting, but got "
                f"{describe(weighting)}."
            )
        if weighting._reads_jacobian() or weighting.requires_losses:
            raise ValueError(
                "`weighting` must read an [m, m] cross matrix and no loss values, but got "
                f"{weighting!r}."
            )
        if update not in _UPDATES:
            raise ValueError(f"`update` must be 'third' or 'mean', but got {update!r}.")
        self.weighting = weighting
        self.update = update

    def reset(self) -> None:
        """Resets the state of the wrapped weighting."""
        reset_state(self.weighting)

    def forward(self, generalized_gramian: Tensor, /) -> Tensor:
        k = _UPDATES[self.update]
        if generalized_gramian.dim() != 4 or generalized_gramian.shape[0] != k:
            raise ValueError(
                f"`generalized_gramian` must have shape [k, m, m, k] with k = {k} mini-batches "
                f'for update="{self.update}" (the Gramian of losses of shape [k, m]), but got '
                f"shape {list(generalized_gramian.shape)}."
            )
        cross = generalized_gramian[0, :, :, 1]
        weights = self.weighting(cross)
        if not bool(torch.isfinite(weights).all()):
            return weights.new_full((k, weights.shape[0]), float("nan"))
        result = weights.new_zeros(k, weights.shape[0])
        if self.update == "third":
            result[2] = weights
        else:
            result[0] = weights / 2
            result[1] = weights / 2
        return result

    def __repr__(self) -> str:
        return f"DoubleSampling({self.weighting!r}, update={self.update!r})"

    def __str__(self) -> str:
        return f"DoubleSampling({self.weighting})"
