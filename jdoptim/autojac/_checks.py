"""Argument checks shared by the functions of autojac and by ``JacobianOptimizer``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from .._describe import describe


def as_tensors(value: Tensor | Iterable[Tensor], name: str) -> list[Tensor]:
    """Turns a tensor or an iterable of tensors into a list, checking every element's type."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"`{name}` must be a torch.Tensor or a sequence of tensors, but got "
            f"{type(value).__name__}."
        )
    tensors = list(value)
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"`{name}` must contain only tensors, but element {i} is a {type(tensor).__name__}."
            )
    return tensors


def check_outputs(outputs: list[Tensor], name: str) -> None:
    """Checks that there is at least one output and that every output is differentiable."""
    check_require_grad(outputs, name, " (it has no `grad_fn`)")


def check_require_grad(tensors: list[Tensor], name: str, hint: str = "") -> None:
    """Checks that there is at least one tensor and that every one requires grad; ``hint`` (e.g.
    ``" (compute it from ...)"``) ends the message about a tensor that does not."""
    if not tensors:
        raise ValueError(f"`{name}` must contain at least one tensor, but got an empty sequence.")
    for i, tensor in enumerate(tensors):
        if not tensor.requires_grad:
            raise ValueError(
                f"`{name}` must contain tensors that require grad, but element {i} of shape "
                f"{list(tensor.shape)} does not{hint}."
            )


def check_parallel_chunk_size(parallel_chunk_size: Any) -> None:
    """Checks that ``parallel_chunk_size`` is ``"auto"``, None or a positive int."""
    if parallel_chunk_size is None or (
        isinstance(parallel_chunk_size, str) and parallel_chunk_size == "auto"
    ):
        return
    if isinstance(parallel_chunk_size, bool) or not isinstance(parallel_chunk_size, int):
        raise TypeError(
            "`parallel_chunk_size` must be 'auto', None or a positive int, but got "
            f"{parallel_chunk_size!r}."
        )
    if parallel_chunk_size <= 0:
        raise ValueError(
            "`parallel_chunk_size` must be 'auto', None or a positive int, but got "
            f"{parallel_chunk_size}."
        )


def check_no_duplicates(tensors: Sequence[Tensor], name: str) -> None:
    """Checks that no tensor appears twice in ``tensors``."""
    seen: set[int] = set()
    for i, tensor in enumerate(tensors):
        if id(tensor) in seen:
            raise ValueError(
                f"`{name}` must not contain the same tensor twice, but element {i} does."
            )
        seen.add(id(tensor))


def check_accumulable(tensors: Sequence[Tensor], name: str) -> None:
    """Checks that every tensor may receive a ``.jac``/``.grad`` field: a leaf or retaining grad."""
    for i, tensor in enumerate(tensors):
        if not tensor.requires_grad or not (tensor.is_leaf or tensor.retains_grad):
            raise ValueError(
                f"`{name}` must contain tensors that require grad and are leaves (or retain "
                f"grad), but element {i} of shape {list(tensor.shape)} has "
                f"requires_grad={tensor.requires_grad} and is_leaf={tensor.is_leaf}."
            )


def check_multipliers(
    multipliers: Tensor | Sequence[Tensor] | None,
    outputs: list[Tensor],
    name: str,
    leading_dim: bool,
) -> list[Tensor] | None:
    """Validates ``jac_tensors``/``jac_outputs`` (``leading_dim``) or ``grad_tensors`` shapes."""
    if multipliers is None:
        return None
    values = as_tensors(multipliers, name)
    if len(values) != len(outputs):
        raise ValueError(
            f"`{name}` must contain one tensor per output ({len(outputs)}), but got {len(values)}."
        )
    rows: int | None = None
    for i, (value, output) in enumerate(zip(values, outputs, strict=True)):
        expected = list(output.shape)
        shape = list(value.shape)
        if leading_dim:
            if value.dim() != output.dim() + 1 or shape[1:] != expected:
                raise ValueError(
                    f"`{name}` must have shape [m', *output.shape] for each output, but element "
                    f"{i} has shape {shape} for an output of shape {expected}."
                )
            if rows is not None and shape[0] != rows:
                raise ValueError(
                    f"`{name}` must have the same number of rows m' for every output, but "
                    f"element {i} has {shape[0]} rows and element 0 has {rows}."
                )
            rows = shape[0]
        elif shape != expected:
            raise ValueError(
                f"`{name}` must have the shape of its output, but element {i} has shape {shape} "
                f"for an output of shape {expected}."
            )
    return values


def as_distinct_tensors(value: Tensor | Iterable[Tensor], name: str) -> list[Tensor]:
    """``value`` as a non-empty list of tensors, none of them twice."""
    tensors = as_tensors(value, name)
    if not tensors:
        raise ValueError(f"`{name}` must contain at least one tensor, but got an empty sequence.")
    check_no_duplicates(tensors, name)
    return tensors


def check_aggregator(aggregator: Any) -> None:
    """Checks that ``aggregator`` is an :class:`~jdoptim.aggregation.Aggregator` instance."""
    from ..aggregation import Aggregator

    if not isinstance(aggregator, Aggregator):
        raise TypeError(
            "`aggregator` must be a jdoptim.aggregation.Aggregator, but got "
            f"{describe(aggregator)}."
        )
