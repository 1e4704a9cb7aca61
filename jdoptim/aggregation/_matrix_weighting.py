"""Weightings whose statistic is the Jacobian itself, and the aggregator built on them."""

from __future__ import annotations

from torch import Tensor

from .._describe import describe
from ._bases import (
    Aggregation,
    Aggregator,
    Weighting,
    _check_matrix,
    _compute_dtype,
    check_losses,
    reset_state,
)


class MatrixWeighting(Weighting):
    r"""A weighting whose statistic is the Jacobian ``J`` of shape ``[m, n]``, not its Gramian.

    Some methods need more than the scalar products of the gradients (e.g. per-coordinate
    squared gradients), so they cannot work on ``J Jᵀ``. Calling the weighting checks that the
    matrix is 2-D (any number of columns), computes in float32 for half-precision inputs and
    returns weights ``[m]`` with the input's device and dtype. Use it with
    :class:`WeightedAggregator`; :class:`GramianWeightedAggregator` refuses it.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import MatrixWeighting, WeightedAggregator
        >>> class FirstColumn(MatrixWeighting):
        ...     def forward(self, matrix, /):
        ...         return matrix[:, 0]
        >>> FirstColumn()(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
        tensor([1., 4.])
    """

    def _reads_jacobian(self) -> bool:
        return True

    def _check_statistic(self, stat: Tensor) -> None:
        if stat.dim() != 2:
            raise ValueError(
                f"`matrix` must be a 2-D Jacobian of shape [m, n], but got shape "
                f"{list(stat.shape)}."
            )


class WeightedAggregator(Aggregator):
    r"""Aggregator of the form :math:`A(J) = J^\top W(J)` for a weighting ``W`` of the Jacobian.

    The weighting (a :class:`MatrixWeighting`, or a weighting wrapping one) is the attribute
    :attr:`weighting`, called as a module on every use so that its forward hooks fire. The loss
    values (keyword ``losses``) are forwarded to it when it reads them, and :meth:`reset`
    resets its state.

    Args:
        weighting: the weighting applied to the Jacobian.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import ExcessMTLWeighting, WeightedAggregator
        >>> aggregator = WeightedAggregator(ExcessMTLWeighting())
        >>> aggregator(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([0.5000, 1.0000])
    """

    def __init__(self, weighting: Weighting) -> None:
        super().__init__()
        if not isinstance(weighting, Weighting):
            raise TypeError(
                "`weighting` must be a jdoptim.aggregation.Weighting, but got "
                f"{describe(weighting)}."
            )
        if not weighting._reads_jacobian():
            raise ValueError(
                f"`weighting` must read the Jacobian (a MatrixWeighting), but got {weighting!r}, "
                "which reads the Gramian: use GramianWeightedAggregator instead."
            )
        self.weighting = weighting

    @property
    def requires_losses(self) -> bool:  # type: ignore[override]
        """Whether the weighting reads the loss values (then pass ``losses=`` to the call)."""
        return self.weighting.requires_losses

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        """Whether gradients may flow through the output: those of the weighting."""
        return self.weighting.differentiable

    def reset(self) -> None:
        """Resets the state of the weighting, if it has any."""
        reset_state(self.weighting)

    def forward(
        self, matrix: Tensor, /, *, losses: Tensor | None = None, weights: Tensor | None = None
    ) -> Tensor:
        """``weights @ matrix``; ``weights`` (given by :meth:`aggregate`) default to
        ``weighting(matrix)`` (with ``losses`` when it reads them)."""
        if weights is None:
            weights = self._weigh(matrix, losses)
        return weights @ matrix

    def _weigh(self, matrix: Tensor, losses: Tensor | None) -> Tensor:
        if losses is None:
            return self.weighting(matrix)
        return self.weighting(matrix, losses=losses)

    def aggregate(self, matrix: Tensor, /, *, losses: Tensor | None = None) -> Aggregation:
        """Aggregates ``matrix`` and returns the update with the weights of the rows (no
        Gramian: the weighting reads the Jacobian itself). The weighting's hooks fire, then the
        aggregator's.

        Example:
            >>> import torch
            >>> from jdoptim.aggregation import ExcessMTLWeighting, WeightedAggregator
            >>> aggregator = WeightedAggregator(ExcessMTLWeighting())
            >>> aggregator.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]])).weights
            tensor([0.5000, 0.5000])
        """
        if type(self).forward is not WeightedAggregator.forward:
            return super().aggregate(matrix, losses=losses)
        _check_matrix(matrix)
        work = matrix.to(_compute_dtype(matrix.dtype))
        if self.requires_losses:
            losses = check_losses(losses, matrix.shape[0], type(self).__name__, work)
        weights = self._weigh(work, losses)
        update = self._call(matrix, losses, weights=weights)
        return Aggregation(update, weights.detach(), None)

    def __repr__(self) -> str:
        if type(self) is WeightedAggregator:
            return f"WeightedAggregator({self.weighting!r})"
        return super().__repr__()
