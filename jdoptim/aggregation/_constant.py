"""Constant: fixed weights given by the user."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting
from ._checks import CheckedVectors, check_vector, resolve_per_row


def _format_weights(weights: Tensor) -> str:
    """``[1., 2.5]``: a short printable form of a weight vector."""
    values = []
    for value in weights.tolist():
        if float(value).is_integer():
            values.append(f"{int(value)}.")
        else:
            values.append(f"{round(value, 4)!r}")
    return "[" + ", ".join(values) + "]"


class ConstantWeighting(CheckedVectors, Weighting):
    r"""The fixed weights :math:`w` given at construction, whatever the Gramian.

    Args:
        weights: a 1-D tensor with one weight per objective; its length must equal the number
            of rows m of the Gramian it is applied to, all finite. It is stored as the buffer
            ``weights``; assigning a new one checks it the same way.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import ConstantWeighting
        >>> ConstantWeighting(torch.tensor([1.0, 2.0]))(torch.eye(2))
        tensor([1., 2.])
    """

    # The weights do not depend on the scale of the Gramian.
    gramian_rescaling = "any"

    weights: Tensor
    _checked_vectors: ClassVar[dict[str, bool]] = {"weights": False}

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        if not isinstance(weights, Tensor):
            raise TypeError(f"`weights` must be a torch.Tensor, but got {type(weights).__name__}.")
        if weights.dtype.is_complex or weights.dtype == torch.bool:
            raise TypeError(f"`weights` must be a real tensor, but got dtype {weights.dtype}.")
        check_vector("weights", weights)
        if not weights.dtype.is_floating_point:
            weights = weights.to(torch.get_default_dtype())
        self.register_buffer("weights", weights.detach().clone())

    def forward(self, gramian: Tensor, /) -> Tensor:
        return resolve_per_row(self.weights, "weights", gramian, 0.0)  # never None here

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights!r})"

    def __str__(self) -> str:
        return f"{type(self).__name__}({_format_weights(self.weights)})"


class Constant(GramianWeightedAggregator):
    r"""Fixed linear combination of the rows: :math:`A(J) = J^\top w`.

    The gradient of the weighted sum of the losses :math:`\sum_i w_i L_i`.

    Args:
        weights: a 1-D tensor of finite values with one weight per row of the Jacobian.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import Constant
        >>> aggregator = Constant(torch.tensor([1.0, 2.0]))
        >>> aggregator(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
        tensor([8., 3., 3.])
        >>> print(aggregator)
        Constant([1., 2.])
    """

    gramian_weighting: ConstantWeighting

    def __init__(self, weights: Tensor) -> None:
        super().__init__(ConstantWeighting(weights))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.gramian_weighting.weights!r})"

    def __str__(self) -> str:
        return f"{type(self).__name__}({_format_weights(self.gramian_weighting.weights)})"
