"""Constructor arguments that stay attributes: validated at construction and on every set."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

import torch
from torch import Tensor

T = TypeVar("T")


class Checked(Generic[T]):
    """A data descriptor that runs ``check(name, value)`` whenever the attribute is set.

    Assigning a bad value raises before anything changes, so an object is never half-updated.
    """

    def __init__(self, check: Callable[[str, Any], T]) -> None:
        self.check = check
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> Checked[T]: ...

    @overload
    def __get__(self, instance: object, owner: type) -> T: ...

    def __get__(self, instance: object | None, owner: type) -> Checked[T] | T:
        if instance is None:
            return self
        value: T = instance.__dict__[self.name]
        return value

    def __set__(self, instance: object, value: Any) -> None:
        instance.__dict__[self.name] = self.check(self.name, value)


def _number(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number, but got {type(value).__name__}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, but got {value!r}.")
    return value


def real(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str, Any], float]:
    """A check that accepts finite numbers in the interval from ``low`` to ``high``."""
    if low is not None and high is not None:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = f"in {left}{low}, {high}{right}"
    elif low is not None:
        interval = f"{'>' if low_open else '>='} {low}"
    else:
        interval = f"{'<' if high_open else '<='} {high}"

    def check(name: str, value: Any) -> float:
        number = _number(name, value)
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and (number >= high if high_open else number > high)
        if too_low or too_high:
            raise ValueError(f"`{name}` must be a finite number {interval}, but got {value!r}.")
        return number

    return check


def integer(minimum: int) -> Callable[[str, Any], int]:
    """A check that accepts ints ``>= minimum``."""

    def check(name: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"`{name}` must be an int, but got {type(value).__name__}.")
        if value < minimum:
            raise ValueError(f"`{name}` must be an int >= {minimum}, but got {value!r}.")
        return value

    return check


def optional_integer(minimum: int) -> Callable[[str, Any], int | None]:
    """A check that accepts ``None`` or ints ``>= minimum``."""
    check_integer = integer(minimum)

    def check(name: str, value: Any) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"`{name}` must be an int or None, but got {type(value).__name__}.")
        return check_integer(name, value)

    return check


def vector(
    low: float | None = None, high: float | None = None, *, optional: bool = True
) -> Callable[[str, Any], Tensor | None]:
    """A check that accepts 1-D floating tensors with entries in ``[low, high]`` (or ``None``)."""

    def check(name: str, value: Any) -> Tensor | None:
        if value is None and optional:
            return None
        if not isinstance(value, Tensor):
            expected = "a torch.Tensor or None" if optional else "a torch.Tensor"
            raise TypeError(f"`{name}` must be {expected}, but got {type(value).__name__}.")
        if value.dim() != 1:
            raise ValueError(f"`{name}` must be a 1-D tensor, but got shape {list(value.shape)}.")
        if not value.dtype.is_floating_point:
            raise TypeError(f"`{name}` must have a floating dtype, but got {value.dtype}.")
        values = value.detach()
        bad = ~torch.isfinite(values)
        if low is not None:
            bad |= values < low
        if high is not None:
            bad |= values > high
        if bool(bad.any()):
            raise ValueError(
                f"`{name}` must have finite entries in [{low}, {high}], but got "
                f"{values.tolist()!r}."
            )
        return values.clone()

    return check


def check_length(
    vector: Tensor, name: str, length: int, what: str = "one per objective of the input"
) -> None:
    """Raises ``ValueError`` unless the 1-D tensor ``name`` has ``length`` entries."""
    if vector.shape[0] != length:
        raise ValueError(
            f"`{name}` must have {length} entries ({what}), but got shape {list(vector.shape)}."
        )


class Forwarded:
    """An attribute of an aggregator that is the same-named attribute of its weighting.

    The weighting validates it on set, so ``aggregator.alpha = value`` behaves exactly like
    ``aggregator.weighting.alpha = value``.
    """

    def __init__(self) -> None:
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: object | None, owner: type) -> Any:
        if instance is None:
            return self
        return getattr(instance.weighting, self.name)  # type: ignore[attr-defined]

    def __set__(self, instance: object, value: Any) -> None:
        setattr(instance.weighting, self.name, value)  # type: ignore[attr-defined]
