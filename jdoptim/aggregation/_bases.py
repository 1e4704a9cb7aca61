"""Base classes of the aggregation package: aggregators, weightings and generalized weightings."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from .._describe import describe
from .._generalized_gramian import to_square
from ._non_differentiable import make_non_differentiable
from ._rescaling import Rescaling, rescaled_gramian

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_matrix(matrix: Any) -> None:
    """Checks that ``matrix`` is a floating 2-D tensor (the Jacobian given to an aggregator)."""
    if not isinstance(matrix, Tensor):
        raise TypeError(f"`matrix` must be a torch.Tensor, but got {type(matrix).__name__}.")
    if matrix.dim() != 2:
        raise ValueError(
            f"`matrix` must be a 2-D Jacobian of shape [m, n], but got shape {list(matrix.shape)}."
        )
    if not matrix.dtype.is_floating_point:
        raise TypeError(f"`matrix` must have a floating dtype, but got {matrix.dtype}.")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which a tensor of ``dtype`` is processed: half precisions go to float32."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


class Aggregation(NamedTuple):
    """What one aggregation produced, as returned by :meth:`Aggregator.aggregate`.

    Attributes:
        update: the aggregated vector ``[n]``, the same as calling the aggregator.
        weights: the weights ``[m]`` given to the rows, for an aggregator of the form
            :math:`J^\top w` that knows them (:class:`GramianWeightedAggregator`), else ``None``.
        gramian: the Gramian ``J Jᵀ`` ``[m, m]`` the weights were computed from, else ``None``.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import MGDA
        >>> result = MGDA().aggregate(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        >>> result.update, result.weights
        (tensor([0.5000, 0.5000]), tensor([0.5000, 0.5000]))
    """

    update: Tensor
    weights: Tensor | None
    gramian: Tensor | None


def check_losses(losses: object, m: int, user: str, like: Tensor) -> Tensor:
    """The ``[m]`` loss values of a loss-aware method, on ``like``'s device and dtype, detached.

    Missing losses raise ``TypeError`` naming the argument; a wrong shape ``ValueError``.
    """
    if losses is None:
        raise TypeError(
            f"{user} reads the loss values: call it with the keyword argument `losses` (a tensor "
            f"of the {m} losses), but got none."
        )
    if not isinstance(losses, Tensor):
        raise TypeError(f"`losses` must be a torch.Tensor, but got {type(losses).__name__}.")
    if losses.shape != (m,):
        raise ValueError(
            f"`losses` must have shape [m] = [{m}] (one loss per row), but got shape "
            f"{list(losses.shape)}."
        )
    return losses.detach().to(device=like.device, dtype=like.dtype)


def reset_state(module: nn.Module) -> None:
    """Calls ``module.reset()`` when the module is stateful (has a ``reset`` method)."""
    reset = getattr(module, "reset", None)
    if callable(reset):
        reset()


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

    #: Whether the aggregator also reads the loss values: it is then called as
    #: ``aggregator(matrix, losses=losses)`` with the ``[m]`` losses of the current step.
    requires_losses: bool = False

    @abstractmethod
    def forward(self, matrix: Tensor, /) -> Tensor:
        """Aggregates a validated 2-D ``matrix`` (float32 or float64) into a vector."""

    def __call__(self, matrix: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
        return self._call(matrix, losses)

    def aggregate(self, matrix: Tensor, /, *, losses: Tensor | None = None) -> Aggregation:
        """Aggregates ``matrix`` and reports the weights and Gramian used, in one call.

        The update is what calling the aggregator returns (its hooks fire). ``weights`` and
        ``gramian`` are ``None`` here; :class:`GramianWeightedAggregator` and
        :class:`WeightedAggregator` fill in what they know, at no extra cost. This is how
        :class:`~jdoptim.JacobianOptimizer` and :func:`~jdoptim.autojac.jac_to_grad` learn the
        weights they report. ``losses`` are passed on to aggregators that read them.

        Example:
            >>> import torch
            >>> from jdoptim.aggregation import Mean, TrimmedMean
            >>> matrix = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
            >>> Mean().aggregate(matrix).weights
            tensor([0.5000, 0.5000])
            >>> TrimmedMean(trim_number=0).aggregate(matrix).weights is None
            True
        """
        return Aggregation(self(matrix, losses=losses), None, None)

    def _call(self, matrix: Tensor, losses: Tensor | None, **forward_kwargs: Any) -> Tensor:
        """Checks ``matrix`` (and the losses of a loss-aware aggregator), runs the module (hooks
        included) in the compute dtype and casts the result back."""
        _check_matrix(matrix)
        dtype = matrix.dtype
        compute_matrix = matrix.to(_compute_dtype(dtype))
        if self.requires_losses:
            name = type(self).__name__
            forward_kwargs["losses"] = check_losses(losses, matrix.shape[0], name, compute_matrix)
        output: Tensor = super().__call__(compute_matrix, **forward_kwargs)
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

    Most weightings are Gramian-based: the statistic is the Gramian ``G = J Jᵀ`` of shape
    ``[m, m]`` (or, for the double-sampling methods, the square product ``J₁ J₂ᵀ`` of the
    Jacobians of two mini-batches); those of :class:`MatrixWeighting` read the Jacobian itself.
    Calling the weighting checks the statistic's shape, computes in float32 for half-precision
    inputs and returns weights with the input's device and dtype. Weightings that also read the
    loss values (``requires_losses = True``) take them as the keyword argument ``losses``.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import MeanWeighting
        >>> MeanWeighting()(torch.eye(4))
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """

    #: Whether gradients may flow through the weights.
    differentiable: bool = True

    #: Whether the weighting also reads the loss values: it is then called as
    #: ``weighting(stat, losses=losses)`` with the ``[m]`` losses of the current step.
    requires_losses: bool = False

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

    def _reads_jacobian(self) -> bool:
        """Whether the statistic is the Jacobian ``[m, n]`` rather than an ``[m, m]`` matrix."""
        return False

    def _check_statistic(self, stat: Tensor) -> None:
        """Raises ``ValueError`` unless ``stat`` has the shape this weighting reads.

        Gramian weightings read a square matrix ``[m, m]`` (a Gramian, or for some methods the
        non-symmetric product of the Jacobians of two mini-batches).
        """
        if stat.dim() != 2 or stat.shape[0] != stat.shape[1]:
            raise ValueError(
                f"`gramian` must be a square matrix of shape [m, m], but got shape "
                f"{list(stat.shape)}."
            )

    def __call__(self, gramian: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
        name = "matrix" if self._reads_jacobian() else "gramian"
        if not isinstance(gramian, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, but got {type(gramian).__name__}.")
        self._check_statistic(gramian)
        dtype = gramian.dtype
        if not dtype.is_floating_point:
            raise TypeError(f"`{name}` must have a floating dtype, but got {dtype}.")
        stat = gramian.to(_compute_dtype(dtype))
        if self.requires_losses:
            checked = check_losses(losses, gramian.shape[0], type(self).__name__, stat)
            weights: Tensor = super().__call__(stat, losses=checked)
        else:
            weights = super().__call__(stat)
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
                f"{describe(gramian_weighting)}."
            )
        if gramian_weighting._reads_jacobian():
            raise ValueError(
                "`gramian_weighting` must read the Gramian, but got "
                f"{gramian_weighting!r}, which reads the Jacobian: use "
                "WeightedAggregator instead."
            )
        self.gramian_weighting = gramian_weighting

    @property
    def weighting(self) -> Weighting:
        """The Gramian weighting of this aggregator (same object as :attr:`gramian_weighting`)."""
        return self.gramian_weighting

    @property
    def requires_losses(self) -> bool:  # type: ignore[override]
        """Whether the weighting reads the loss values (then pass ``losses=`` to the call)."""
        return self.gramian_weighting.requires_losses

    def reset(self) -> None:
        """Resets the state of the weighting, if it has any (see its ``reset``)."""
        reset_state(self.gramian_weighting)

    def forward(
        self, matrix: Tensor, /, *, losses: Tensor | None = None, weights: Tensor | None = None
    ) -> Tensor:
        """``weights @ matrix``; ``weights`` (given by :meth:`aggregate`) default to
        ``gramian_weighting(matrix @ matrix.T)`` (with ``losses`` when it reads them)."""
        if weights is None:
            gramian = rescaled_gramian(matrix, self.gramian_weighting.gramian_rescaling)
            weights = self._weigh(gramian, losses)
        return weights @ matrix

    def _weigh(self, gramian: Tensor, losses: Tensor | None) -> Tensor:
        if losses is None:
            return self.gramian_weighting(gramian)
        return self.gramian_weighting(gramian, losses=losses)

    def aggregate(self, matrix: Tensor, /, *, losses: Tensor | None = None) -> Aggregation:
        """Aggregates ``matrix`` and returns the update with its weights and Gramian.

        The Gramian is computed once and given to the weighting, whose hooks fire, then the
        aggregator itself runs (its hooks fire too) on the weights found. A Gramian holding inf
        or NaN (an overflow, e.g. of scaled float16 losses) is never given to the weighting:
        the update is then NaN (so that a :class:`torch.amp.GradScaler` sees the overflow) and
        the weights ``None``. A subclass that overrides :meth:`forward` is simply called, and
        reports no weights.

        Example:
            >>> import torch
            >>> from jdoptim.aggregation import UPGrad
            >>> matrix = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
            >>> update, weights, gramian = UPGrad().aggregate(matrix)
            >>> update, weights, gramian
            (tensor([0.5000, 1.0000]), tensor([0.5000, 0.5000]), tensor([[1., 0.],
                    [0., 4.]]))
        """
        if type(self).forward is not GramianWeightedAggregator.forward:
            return super().aggregate(matrix, losses=losses)
        _check_matrix(matrix)
        work = matrix.to(_compute_dtype(matrix.dtype))
        if self.requires_losses:
            losses = check_losses(losses, matrix.shape[0], type(self).__name__, work)
        gramian = rescaled_gramian(work, self.gramian_weighting.gramian_rescaling)
        if not bool(torch.isfinite(gramian).all()):
            return Aggregation(torch.full_like(matrix[0], math.nan), None, gramian.detach())
        weights = self._weigh(gramian, losses)
        update = self._call(matrix, losses, weights=weights)
        return Aggregation(update, weights.detach(), gramian.detach())

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

    #: Whether the weighting also reads the loss values (``losses=``, of the losses' shape).
    requires_losses: bool = False

    @abstractmethod
    def forward(self, generalized_gramian: Tensor, /) -> Tensor:
        """Computes weights from a validated generalized Gramian."""

    def __call__(self, generalized_gramian: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
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
        if not self.requires_losses:
            result: Tensor = super().__call__(generalized_gramian)
            return result
        if losses is None:
            raise TypeError(
                f"{type(self).__name__} reads the loss values: call it with the keyword argument "
                f"`losses` (a tensor of shape {shape[:k]}), but got none."
            )
        if not isinstance(losses, Tensor) or list(losses.shape) != shape[:k]:
            raise ValueError(
                f"`losses` must be a tensor of shape {shape[:k]}, but got "
                f"{list(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__}."
            )
        result = super().__call__(generalized_gramian, losses=losses.detach())
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
                f"{describe(weighting)}."
            )
        self.weighting = weighting

    @property
    def requires_losses(self) -> bool:  # type: ignore[override]
        """Whether the weighting reads the loss values (then pass ``losses=`` to the call)."""
        return self.weighting.requires_losses

    def reset(self) -> None:
        """Resets the state of the weighting, if it has any (see its ``reset``)."""
        reset_state(self.weighting)

    def forward(self, generalized_gramian: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
        shape = generalized_gramian.shape[: generalized_gramian.dim() // 2]
        square = to_square(generalized_gramian)
        if losses is None:
            weights: Tensor = self.weighting(square)
        else:
            weights = self.weighting(square, losses=losses.reshape(-1))
        return weights.reshape(shape)

    def __repr__(self) -> str:
        return f"Flattening({self.weighting!r})"

    def __str__(self) -> str:
        return f"Flattening({self.weighting})"
