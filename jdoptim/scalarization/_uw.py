"""UW: uncertainty weighting with learned log-variances."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._base import Scalarizer
from ._checks import as_shape, check_same_shape


class UW(Scalarizer):
    r"""Uncertainty weighting: :math:`\sum_i \left(\tfrac12 e^{-s_i} L_i + \tfrac12 s_i\right)`.

    :math:`s_i = \log \sigma_i^2` is a learned log-variance per loss: the parameter ``log_var``,
    zeros at the start, learned by the optimizer of the model through the ordinary backward
    pass (pass ``scalarizer.parameters()`` to it). The gradient with respect to :math:`L_i` is
    :math:`\tfrac12 e^{-s_i}` and with respect to :math:`s_i` it is
    :math:`\tfrac12 (1 - e^{-s_i} L_i)`, so the optimum is at :math:`s_i = \log L_i`. Every loss
    gets the regression form of "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics" (Kendall et al., 2018); the paper's classification form
    :math:`e^{-s_i} L_i + \tfrac12 s_i` is obtained by passing twice the loss. A negative loss
    makes the value unbounded below in :math:`s` (not checked).

    Args:
        shape: the shape of the values: an int ``n`` for ``(n,)``, or a sequence of ints.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import UW
        >>> scalarizer = UW(2)
        >>> scalarizer(torch.tensor([2.0, 4.0]))  # (2 + 4) / 2 while log_var = 0
        tensor(3., grad_fn=<SumBackward0>)
        >>> optimizer = torch.optim.SGD(scalarizer.parameters(), lr=0.1)
    """

    log_var: nn.Parameter

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(as_shape(shape)))

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(values, self.log_var, "log_var")
        return (0.5 * torch.exp(-self.log_var) * values + 0.5 * self.log_var).sum()

    def reset(self) -> None:
        """Sets ``log_var`` back to zeros in place (the same parameter object). The state of an
        optimizer that holds it is not touched."""
        with torch.no_grad():
            self.log_var.zero_()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.log_var.shape)})"
