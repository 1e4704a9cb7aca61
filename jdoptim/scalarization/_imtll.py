"""IMTLL: the loss-balance part of impartial multi-task learning, with learned scales."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._base import Scalarizer
from ._checks import as_shape, check_same_shape


class IMTLL(Scalarizer):
    r"""Impartial loss balancing: :math:`\sum_i \left(e^{s_i} L_i - s_i\right)`.

    :math:`s_i` is a learned log-scale per loss: the parameter ``log_scale``, zeros at the start,
    learned by the optimizer of the model through the ordinary backward pass (pass
    ``scalarizer.parameters()`` to it). The gradient with respect to :math:`L_i` is
    :math:`e^{s_i}` and with respect to :math:`s_i` it is :math:`e^{s_i} L_i - 1`, so at the
    optimum every scaled loss :math:`e^{s_i} L_i` equals 1. It is twice uncertainty weighting
    with the opposite log-variances: ``IMTLL`` with :math:`s` equals 2 ``UW`` with :math:`-s`.
    The loss-balance part (base :math:`e`) of "Towards Impartial Multi-task Learning" (Liu et
    al., 2021); its gradient-balance part is the aggregator :class:`~jdoptim.aggregation.IMTLG`.

    Args:
        shape: the shape of the values: an int ``n`` for ``(n,)``, or a sequence of ints.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import IMTLL
        >>> scalarizer = IMTLL(2)
        >>> scalarizer(torch.tensor([2.0, 4.0]))  # 2 + 4 while log_scale = 0
        tensor(6., grad_fn=<SumBackward0>)
    """

    log_scale: nn.Parameter

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(as_shape(shape)))

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(values, self.log_scale, "log_scale")
        return (torch.exp(self.log_scale) * values - self.log_scale).sum()

    def reset(self) -> None:
        """Sets ``log_scale`` back to zeros in place (the same parameter object). The state of an
        optimizer that holds it is not touched."""
        with torch.no_grad():
            self.log_scale.zero_()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.log_scale.shape)})"
