"""GeometricMean: the geometric mean of the losses, computed in log space."""

from __future__ import annotations

from torch import Tensor

from ._base import Scalarizer


class GeometricMean(Scalarizer):
    r"""The geometric mean :math:`\left(\prod_i L_i\right)^{1/m} =
    \exp\left(\frac{1}{m} \sum_i \log L_i\right)` of all the entries of the values.

    It is computed in log space, so the product can neither overflow nor underflow. The gradient
    with respect to :math:`L_i` is :math:`\mathrm{GM} / (m L_i)`: a loss is weighted by the inverse
    of its size, which balances losses of different scales. From "MultiNet++: Multi-Stream
    Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning" (Chennupati et al.,
    2019).

    A negative entry (``-inf`` included) raises ``ValueError``. An entry equal to 0 gives exactly
    0, with a NaN gradient at the zero entries and 0 elsewhere (the partial derivative at a zero
    loss is infinite), which a :class:`~jdoptim.JacobianOptimizer` then refuses as a non-finite
    gradient. NaN gives NaN, ``+inf`` gives ``inf`` and an empty tensor gives NaN.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import GeometricMean
        >>> value = GeometricMean()(torch.tensor([1.0, 4.0, 16.0]))
        >>> round(value.item(), 4)
        4.0
    """

    def forward(self, values: Tensor, /) -> Tensor:
        if bool((values < 0).any()):
            raise ValueError(
                "`values` must be >= 0 for a geometric mean, but got the negative entry "
                f"{values.detach().min().item()!r}."
            )
        return values.log().mean().exp()
