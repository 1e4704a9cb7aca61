"""Base classes of the aggregation package: aggregators, weightings and generalized weightings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from ._non_differentiable import make_non_differentiable
from ._rescaling import Rescaling, rescaled_gramian

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _describe(value: object) -> str:
    """The type of ``value``, or, for a class passed instead of an instance, how to fix it."""
    if isinstance(value, type):
        return f"the class {value.__name__} (pass an instance: {value.__name__}())"
    return type(value).__name__


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which a tensor of ``dtype`` is processed: half precisions go to float32."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


class Aggregator(nn.Module, ABC):
    r"""Turns a Jacobian matrix ``[m, n]`` (one row per objective) into one update vector ``[n]``.

    Subclasses implement :meth:`forward`. Calling the aggregator checks that the matrix is 2-D,
    computes in float32 when the input is float16 or bfloat16, and returns a vector on the
    input's device with the input's dtype. The matrix is taken positionally only.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import Mean
        >>> Mean()(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([2., 3.])
    """

    #: Whether gradients may flow through the output; ``False`` raises
    #: :class:`NonDifferentiableError` on backpropagation.
    differentiable: bool = True

    @abstractmethod
    def forward(self, matrix: Tensor, /) -> Tensor:
        """Aggregates a validated 2-D ``matrix`` (float32 or float64) into a vector."""

    def __call__(self, matrix: Tensor, /) -> Tensor:
        if not isinstance(matrix, Tensor):
            raise TypeError(f"`matrix` must be a torch.Tensor, but got {type(matrix).__name__}.")
        if matrix.dim() != 2:
            raise ValueError(
                f"`matrix` must be a 2-D Jacobian of shape [m, n], but got shape "
                f"{list(matrix.shape)}."
            )
        dtype = matrix.dtype
        if not dtype.is_floating_point:
            raise TypeError(f"`matrix` must have a floating dtype, but got {dtype}.")
        output: Tensor = super().__call__(matrix.to(_compute_dtype(dtype)))
        output = output.to(dtype)
        if not self.differentiable:
            output = make_non_differentiable(output, matrix, type(self).__name__)
        return output

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __str__(self) -> str:
        return type(self).__name__


class Weighting(nn.Module, ABC):
    r"""Turns a statistic of the Jacobian into a vector of weights ``[m]``, one per objective.

    Every weighting of jdoptim is Gramian-based: the statistic is the Gramian ``G = J Jᵀ`` of
    shape ``[m, m]``. Calling the weighting checks that the Gramian is square, computes in
    float32 for half-precision inputs and returns weights with the input's device and dtype.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import MeanWeighting
        >>> MeanWeighting()(torch.eye(4))
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """

    #: Whether gradients may flow through the weights.
    differentiable: bool = True

    #: Whether the weights stay the same when the Gramian is multiplied by a power of two, which
    #: lets :class:`GramianWeightedAggregator` form the Gramian of a rescaled Jacobian when
    #: ``J Jᵀ`` would overflow (or underflow) its dtype: ``"none"`` (the default: ``J Jᵀ`` as
    #: is), ``"down"`` (same weights for a Gramian scaled down as long as its trace stays
    #: above ``2^78``, e.g. weights of ``G / tr(G)`` behind a threshold on the trace; used when
    #: some ``|J_ij| ≥ 2^40``) or ``"any"`` (same weights for every positive multiple; also
    #: used when every ``|J_ij| < 2^-40``).
    gramian_rescaling: ClassVar[Rescaling] = "none"

    @abstractmethod
    def forward(self, gramian: Tensor, /) -> Tensor:
        """Computes weights ``[m]`` from a validated square ``gramian`` ``[m, m]``."""

    def __call__(self, gramian: Tensor, /) -> Tensor:
        if not isinstance(gramian, Tensor):
            raise TypeError(f"`gramian` must be a torch.Tensor, but got {type(gramian).__name__}.")
        if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
            raise ValueError(
                f"`gramian` must be a square matrix of shape [m, m], but got shape "
                f"{list(gramian.shape)}."
            )
        dtype = gramian.dtype
        if not dtype.is_floating_point:
            raise TypeError(f"`gramian` must have a floating dtype, but got {dtype}.")
        weights: Tensor = super().__call__(gramian.to(_compute_dtype(dtype)))
        weights = weights.to(dtype)
        if not self.differentiable:
            weights = make_non_differentiable(weights, gramian, type(self).__name__)
        return weights

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __str__(self) -> str:
        return type(self).__name__


class GramianWeightedAggregator(Aggregator):
    r"""Aggregator of the form :math:`A(J) = J^\top W(J J^\top)` for a Gramian weighting ``W``.

    The weighting is the attribute :attr:`gramian_weighting` (also reachable as
    :attr:`weighting`), a module called on every use so that its forward hooks fire; it can be
    reused with :class:`jdoptim.autogram.Engine`.

    The Gramian is ``J Jᵀ``, except when the weighting declares (by its
    :attr:`~Weighting.gramian_rescaling`) that its weights do not depend on the scale of the
    Gramian: then a Jacobian with an entry ``≥ 2^40`` (or, with ``"any"``, only entries below
    ``2^-40``) is first multiplied by a power of two, so that a finite Jacobian gives a finite
    Gramian with all its digits, and a representable aggregate stays finite.

    Args:
        gramian_weighting: the weighting applied to the Gramian ``J Jᵀ``.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import GramianWeightedAggregator, MeanWeighting
        >>> aggregator = GramianWeightedAggregator(MeanWeighting())
        >>> aggregator(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        tensor([0.5000, 0.5000])
    """

    def __init__(self, gramian_weighting: Weighting) -> None:
        super().__init__()
        if not isinstance(gramian_weighting, Weighting):
            raise TypeError(
                "`gramian_weighting` must be a jdoptim.aggregation.Weighting, but got "
                f"{_describe(gramian_weighting)}."
            )
        self.gramian_weighting = gramian_weighting

    @property
    def weighting(self) -> Weighting:
        """The Gramian weighting of this aggregator (same object as :attr:`gramian_weighting`)."""
        return self.gramian_weighting

    def forward(self, matrix: Tensor, /) -> Tensor:
        gramian = rescaled_gramian(matrix, self.gramian_weighting.gramian_rescaling)
        weights = self.gramian_weighting(gramian)
        return weights @ matrix

    def __repr__(self) -> str:
        if type(self) is GramianWeightedAggregator:
            return f"GramianWeightedAggregator({self.gramian_weighting!r})"
        return super().__repr__()


class GeneralizedWeighting(nn.Module, ABC):
    r"""Turns a generalized Gramian ``[m1, …, mk, mk, …, m1]`` into weights ``[m1, …, mk]``.

    The generalized Gramian is the Gramian of a tensor of losses of shape ``[m1, …, mk]``, as
    returned by :meth:`jdoptim.autogram.Engine.compute_gramian`.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import Flattening, MeanWeighting
        >>> Flattening(MeanWeighting())(torch.ones(2, 3, 3, 2)).shape
        torch.Size([2, 3])
    """

    @abstractmethod
    def forward(self, generalized_gramian: Tensor, /) -> Tensor:
        """Computes weights from a validated generalized Gramian."""

    def __call__(self, generalized_gramian: Tensor, /) -> Tensor:
        if not isinstance(generalized_gramian, Tensor):
            raise TypeError(
                "`generalized_gramian` must be a torch.Tensor, but got "
                f"{type(generalized_gramian).__name__}."
            )
        shape = list(generalized_gramian.shape)
        k = len(shape) // 2
        if len(shape) % 2 != 0 or shape[:k] != shape[k:][::-1]:
            raise ValueError(
                "`generalized_gramian` must have a shape of the form [m1, …, mk, mk, …, m1], "
                f"but got shape {shape}."
            )
        result: Tensor = super().__call__(generalized_gramian)
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __str__(self) -> str:
        return type(self).__name__


class Flattening(GeneralizedWeighting):
    r"""Applies a :class:`Weighting` to a generalized Gramian by flattening it.

    The generalized Gramian of shape ``[m1, …, mk, mk, …, m1]`` is reshaped into an ``[M, M]``
    Gramian (``M = m1·…·mk``), ``weighting`` is applied to it, and the ``[M]`` weights are
    reshaped back into ``[m1, …, mk]``.

    Args:
        weighting: the weighting applied to the flattened Gramian.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import Flattening, UPGradWeighting
        >>> losses_jacobian = torch.randn(2, 3, 5)  # [batch, tasks, parameters]
        >>> gramian = torch.einsum("btp,cup->btuc", losses_jacobian, losses_jacobian)
        >>> Flattening(UPGradWeighting())(gramian).shape
        torch.Size([2, 3])
    """

    def __init__(self, weighting: Weighting) -> None:
        super().__init__()
        if not isinstance(weighting, Weighting):
            raise TypeError(
                "`weighting` must be a jdoptim.aggregation.Weighting, but got "
                f"{_describe(weighting)}."
            )
        self.weighting = weighting

    def forward(self, generalized_gramian: Tensor, /) -> Tensor:
        k = generalized_gramian.dim() // 2
        shape = generalized_gramian.shape[:k]
        size = shape.numel()
        # Reverse the trailing dimensions so that index (i1..ik, j1..jk) pairs matching orders.
        reversed_dims = list(range(k)) + list(range(2 * k - 1, k - 1, -1))
        square = generalized_gramian.permute(reversed_dims).reshape(size, size)
        weights: Tensor = self.weighting(square)
        return weights.reshape(shape)

    def __repr__(self) -> str:
        return f"Flattening({self.weighting!r})"

    def __str__(self) -> str:
        return f"Flattening({self.weighting})"
