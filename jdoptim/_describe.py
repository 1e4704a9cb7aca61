"""How an argument of the wrong type is shown in error messages."""

from __future__ import annotations


def describe(value: object) -> str:
    """The type of ``value``, or, for a class passed instead of an instance, how to fix it."""
    if isinstance(value, type):
        return f"the class {value.__name__} (pass an instance: {value.__name__}())"
    return type(value).__name__
