"""Validation helpers shared by the scalarizers."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def check_number(name: str, value: object) -> float:
    """Returns ``value`` as a float, or raises ``TypeError`` naming ``name`` for a non-number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number, but got {type(value).__name__}.")
    return float(value)


def check_positive(name: str, value: object) -> None:
    """Raises unless ``value`` is a finite number ``> 0`` (NaN and infinity are refused)."""
    number = check_number(name, value)
    if not (number > 0.0 and math.isfinite(number)):
        raise ValueError(f"`{name}` must be a finite number > 0, but got {value!r}.")


def check_non_negative(name: str, value: object) -> None:
    """Raises unless ``value`` is a finite number ``>= 0`` (NaN and infinity are refused)."""
    number = check_number(name, value)
    if not (number >= 0.0 and math.isfinite(number)):
        raise ValueError(f"`{name}` must be a finite number >= 0, but got {value!r}.")


def _as_size(value: object) -> int | None:
    """``value`` as an int if it is an integer (a Python or NumPy int, not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def as_shape(shape: object) -> tuple[int, ...]:
    """Reads ``shape``: an int ``n`` means ``(n,)``; a sequence of ints (a tuple, a list, a
    ``torch.Size``) is taken as it is. Sizes must be ``>= 0``."""
    single = _as_size(shape)
    if single is not None:
        sizes: list[int | None] = [single]
    elif isinstance(shape, Sequence) and not isinstance(shape, str):
        sizes = [_as_size(size) for size in shape]
    else:
        raise TypeError(
            f"`shape` must be an int or a sequence of ints, but got {type(shape).__name__}."
        )
    result = []
    for size in sizes:
        if size is None:
            raise TypeError(f"`shape` must be an int or a sequence of ints, but got {shape!r}.")
        if size < 0:
            raise ValueError(f"`shape` must hold sizes >= 0, but got {shape!r}.")
        result.append(size)
    return tuple(result)


def config_tensor(name: str, tensor: object, *, optional: bool) -> Tensor | None:
    """A detached copy of the configuration tensor ``name`` (``weights``, ``reference``,
    ``min_losses``), to be stored as a buffer. Integer tensors become the default float dtype;
    boolean and complex tensors are refused. ``None`` is returned as is when ``optional``."""
    if tensor is None and optional:
        return None
    if not isinstance(tensor, Tensor):
        expected = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"`{name}` must be {expected}, but got {type(tensor).__name__}.")
    if tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"`{name}` must be a real tensor, but got dtype {tensor.dtype}.")
    if not tensor.dtype.is_floating_point:
        tensor = tensor.to(torch.get_default_dtype())
    return tensor.detach().clone()


def check_same_shape(values: Tensor, tensor: Tensor | None, name: str) -> None:
    """Raises ``ValueError`` unless ``values`` has exactly the shape of ``tensor`` (when given).

    A ``[2, 3]`` tensor does not match a tensor of 6 elements: the shapes must be equal.
    """
    if tensor is not None and values.shape != tensor.shape:
        raise ValueError(
            f"`values` must have the shape of `{name}`, {tuple(tensor.shape)}, but got shape "
            f"{tuple(values.shape)}."
        )


class OptionalBuffers(nn.Module):
    """Mixin of the scalarizers whose configuration tensors may be None at construction and
    assigned later (the papers re-sample the preference every batch): before a state dict is
    loaded, each buffer named in ``_optional_buffers`` that is None here but saved there takes the
    saved tensor, so that such a checkpoint loads into a fresh instance built with None."""

    _optional_buffers: tuple[str, ...] = ()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in self._optional_buffers:
            saved = state_dict.get(prefix + name)
            if getattr(self, name) is None and isinstance(saved, Tensor):
                setattr(self, name, saved.detach().clone())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
