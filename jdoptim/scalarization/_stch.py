"""STCH: smooth Tchebycheff scalarization."""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Scalarizer
from ._checks import OptionalBuffers, check_positive, check_same_shape, config_tensor


class STCH(OptionalBuffers, Scalarizer):
    r"""Smooth Tchebycheff scalarization: :math:`\mu \log \sum_i \exp(y_i / \mu)` with
    :math:`y_i = \lambda_i (L_i - z^*_i)`.

    A smooth approximation of the weighted maximum :math:`\max_i y_i`, which it bounds:
    :math:`\max_i y_i \le \text{value} \le \max_i y_i + \mu \log m`, so it tends to the maximum as
    :math:`\mu \to 0`. It is evaluated as :math:`M + \mu \log \sum_i \exp((y_i - M) / \mu)` with
    :math:`M = \max_i y_i`, so that large losses with a small :math:`\mu` do not overflow. The
    gradient with respect to :math:`L_i` is :math:`\lambda_i \operatorname{softmax}(y / \mu)_i`.
    From "Smooth Tchebycheff Scalarization for Multi-Objective Optimization" (Lin et al., 2024).

    Args:
        mu: the smoothing temperature, a finite number ``> 0`` (the paper tries 0.01 to 1).
        weights: the preference :math:`\lambda`, with the shape of the values (the paper puts
            it on the simplex; this is not enforced). ``None`` (default) gives :math:`1/m` to
            every entry. Stored as the buffer ``weights``.
        reference: the ideal point :math:`z^*` subtracted from the values, with their shape.
            ``None`` (default) means no shift. Stored as the buffer ``reference``.

    Both buffers may be reassigned between calls (to sample a new preference every batch); a
    ``state_dict`` that holds them also loads into an instance built with ``None``.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import STCH
        >>> scalarizer = STCH(mu=0.01, weights=torch.tensor([1.0, 1.0]))
        >>> round(scalarizer(torch.tensor([3.0, 1.0])).item(), 4)  # close to the max
        3.0
    """

    _optional_buffers = ("weights", "reference")
    weights: Tensor | None
    reference: Tensor | None

    def __init__(
        self, mu: float, weights: Tensor | None = None, reference: Tensor | None = None
    ) -> None:
        super().__init__()
        check_positive("mu", mu)
        self.mu = mu
        self.register_buffer("weights", config_tensor("weights", weights, optional=True))
        self.register_buffer("reference", config_tensor("reference", reference, optional=True))

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(values, self.weights, "weights")
        check_same_shape(values, self.reference, "reference")
        shifted = values if self.reference is None else values - self.reference
        if self.weights is None:
            y = shifted * torch.full_like(values, 1.0 / max(values.numel(), 1))
        else:
            y = self.weights * shifted
        y = y.flatten()
        if y.numel() == 0:
            # The log of an empty sum of exponentials.
            return y.new_full((), float("-inf"))
        # The shift is a constant: the gradient of the value is then exactly the softmax.
        top = y.detach().max()
        return top + self.mu * torch.logsumexp((y - top) / self.mu, dim=0)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mu={self.mu!r}, weights={self.weights!r}, "
            f"reference={self.reference!r})"
        )
