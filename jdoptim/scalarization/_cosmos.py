"""COSMOS: the linear scalarization with a cosine penalty towards the preference."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional

from ._base import Scalarizer
from ._checks import check_non_negative, check_same_shape, config_tensor

_EPS = 1e-8


class COSMOS(Scalarizer):
    r"""COSMOS: :math:`\sum_i r_i L_i - \lambda \cos(r, L)`.

    The cosine is :func:`torch.nn.functional.cosine_similarity` of the flattened tensors,
    :math:`\cos(r, L) = \frac{r \cdot L}{\max(\lVert r \rVert, \epsilon)
    \max(\lVert L \rVert, \epsilon)}` with :math:`\epsilon = 10^{-8}` (each norm is clamped
    separately). The penalty pulls the vector of losses towards the preference ray :math:`r`.
    When all the losses are (almost) 0, the cosine is 0 and its gradient is of the order of
    :math:`\lambda / \epsilon`, which is huge. From "Scalable Pareto Front Approximation for Deep
    Multi-Objective Learning" (Ruchte and Grabocka, 2021); the paper also feeds :math:`r`
    to the network and samples it from a Dirichlet distribution at every batch, which is left
    to the user (reassign ``weights``).

    Args:
        lambda_: the weight of the cosine penalty, a finite number ``>= 0``; 0 gives the linear
            scalarization.
        weights: the preference :math:`r`, with the shape of the values. Stored as the buffer
            ``weights``.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import COSMOS
        >>> scalarizer = COSMOS(lambda_=1.0, weights=torch.tensor([1.0, 0.0]))
        >>> round(scalarizer(torch.tensor([3.0, 4.0])).item(), 4)  # 3 - cos = 3 - 3/5
        2.4
    """

    weights: Tensor

    def __init__(self, lambda_: float, weights: Tensor) -> None:
        super().__init__()
        check_non_negative("lambda_", lambda_)
        self.lambda_ = lambda_
        self.register_buffer("weights", config_tensor("weights", weights, optional=False))

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(values, self.weights, "weights")
        dtype = torch.result_type(self.weights, values)
        weights = self.weights.to(dtype)
        cosine = functional.cosine_similarity(
            weights.flatten(), values.to(dtype).flatten(), dim=0, eps=_EPS
        )
        return (weights * values).sum() - self.lambda_ * cosine

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lambda_={self.lambda_!r}, weights={self.weights!r})"
