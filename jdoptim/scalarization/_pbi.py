"""PBI: penalty-based boundary intersection."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Scalarizer
from ._checks import OptionalBuffers, check_non_negative, check_same_shape, config_tensor

# Under the square root of the distance to the ray: keeps its gradient finite on the ray.
_EPS = 1e-12


class PBI(OptionalBuffers, Scalarizer):
    r"""Penalty-based boundary intersection: :math:`d_1 + \theta d_2`.

    On the flattened tensors, with :math:`f = L - z^*` and the unit preference direction
    :math:`\hat d = w / \lVert w \rVert`: :math:`d_1 = f \cdot \hat d` is the (signed) progress
    along the preference ray and :math:`d_2 = \sqrt{\lVert f - d_1 \hat d \rVert^2 + 10^{-12}}`
    the distance to it. The distance is computed from the perpendicular vector, which stays
    accurate close to the ray, and the :math:`10^{-12}` keeps its gradient finite on the ray
    (with a single loss the input is always on the ray, and the value is
    :math:`d_1 + \theta \cdot 10^{-6}`). From "MOEA/D: A Multiobjective Evolutionary Algorithm
    Based on Decomposition" (Zhang and Li, 2007). The paper takes :math:`d_1 = |f \cdot \hat d|`;
    the two agree when :math:`z^*` is an ideal point and :math:`w \ge 0`, and the signed form is
    smooth and keeps rewarding lower losses below the reference. All-zero weights give NaN.

    Args:
        theta: the penalty on the distance to the ray, a finite number ``>= 0`` (the paper
            uses 5).
        weights: the preference :math:`w`, with the shape of the values, non-negative in the
            paper's use (not enforced). Stored as the buffer ``weights``.
        reference: the reference point :math:`z^*`, with the shape of the values; ``None``
            (default) means the origin. Stored as the buffer ``reference``.

    Both buffers may be reassigned between calls (to sample a new preference every batch); a
    ``state_dict`` that holds a reference also loads into an instance built with ``None``.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import PBI
        >>> scalarizer = PBI(theta=5.0, weights=torch.tensor([1.0, 0.0]))
        >>> round(scalarizer(torch.tensor([3.0, 4.0])).item(), 4)  # 3 + 5 * 4
        23.0
    """

    _optional_buffers = ("reference",)
    weights: Tensor
    reference: Tensor | None

    def __init__(self, theta: float, weights: Tensor, reference: Tensor | None = None) -> None:
        super().__init__()
        check_non_negative("theta", theta)
        self.theta = theta
        self.register_buffer("weights", config_tensor("weights", weights, optional=False))
        self.register_buffer("reference", config_tensor("reference", reference, optional=True))

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(values, self.weights, "weights")
        check_same_shape(values, self.reference, "reference")
        shifted = values if self.reference is None else values - self.reference
        # The dot products need one dtype: torch's promotion of the values with the weights.
        dtype = torch.result_type(shifted, self.weights)
        f = shifted.to(dtype).flatten()
        direction = self.weights.to(dtype).flatten()
        direction = direction / direction.norm()
        d1: Tensor = f @ direction
        perpendicular = f - d1 * direction
        d2: Tensor = (perpendicular @ perpendicular + _EPS).sqrt()
        return d1 + self.theta * d2

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(theta={self.theta!r}, weights={self.weights!r}, "
            f"reference={self.reference!r})"
        )
