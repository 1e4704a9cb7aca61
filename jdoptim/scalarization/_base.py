"""The abstract base class of every scalarizer."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Scalarizer(nn.Module, ABC):
    r"""Turns a tensor of loss values of any shape into one scalar to back-propagate.

    A scalarizer only sees the values of the losses, never their gradients, so a step costs one
    ordinary backward pass. Subclasses implement :meth:`forward`; calling the scalarizer checks
    that ``values`` is a floating-point tensor and runs the module's hooks. The values are taken
    positionally only. The result is a 0-d tensor, differentiable with respect to ``values`` and
    to the scalarizer's learned parameters, if it has any.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import Mean, Scalarizer
        >>> scalarizer = Mean()
        >>> isinstance(scalarizer, Scalarizer)
        True
        >>> scalarizer(torch.tensor([1.0, 2.0, 6.0]))
        tensor(3.)
    """

    @abstractmethod
    def forward(self, values: Tensor, /) -> Tensor:
        """Combines the floating-point tensor ``values`` into a 0-d tensor."""

    def __call__(self, values: Tensor, /) -> Tensor:
        if not isinstance(values, Tensor):
            raise TypeError(f"`values` must be a torch.Tensor, but got {type(values).__name__}.")
        if not values.dtype.is_floating_point:
            raise TypeError(f"`values` must have a floating dtype, but got {values.dtype}.")
        output: Tensor = super().__call__(values)
        return output

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __str__(self) -> str:
        return type(self).__name__
