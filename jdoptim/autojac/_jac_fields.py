"""The ``.jac`` field of tensors, and accumulation into ``.jac`` and ``.grad``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def get_jac(tensor: Tensor) -> Tensor | None:
    """The ``.jac`` field of ``tensor``, or None."""
    jacobian = getattr(tensor, "jac", None)
    return jacobian if isinstance(jacobian, Tensor) else None


def set_jac(tensor: Tensor, jacobian: Tensor) -> None:
    """Sets the ``.jac`` field of ``tensor``."""
    tensor.jac = jacobian  # type: ignore[attr-defined]


def delete_jac(tensor: Tensor) -> None:
    """Removes the ``.jac`` field of ``tensor`` (no-op when absent)."""
    if hasattr(tensor, "jac"):
        del tensor.jac


def check_jac_rows(tensors: Sequence[Tensor], m: int, name: str) -> None:
    """Checks that the existing ``.jac`` fields of ``tensors`` can accumulate ``m`` rows."""
    for i, tensor in enumerate(tensors):
        existing = get_jac(tensor)
        if existing is not None and list(existing.shape) != [m, *tensor.shape]:
            raise ValueError(
                f"`{name}` element {i} already has a `.jac` of shape {list(existing.shape)}, "
                f"which cannot accumulate a Jacobian of shape {[m, *tensor.shape]}; call "
                "`jac_to_grad` or delete the `.jac` field first."
            )


def accumulate_jacs(tensors: Sequence[Tensor], jacobians: Sequence[Tensor]) -> None:
    """Adds each Jacobian into the ``.jac`` of its tensor, creating the field when absent."""
    for tensor, jacobian in zip(tensors, jacobians, strict=True):
        existing = get_jac(tensor)
        if existing is None:
            set_jac(tensor, jacobian)
        else:
            with torch.no_grad():
                existing.add_(jacobian)


def accumulate_grads(tensors: Sequence[Tensor], gradients: Sequence[Tensor]) -> None:
    """Adds each gradient into the ``.grad`` of its tensor, like ``torch.autograd.backward``.

    The gradients must own their memory (see :func:`own`): a new ``.grad`` is the gradient itself.
    """
    for tensor, gradient in zip(tensors, gradients, strict=True):
        if tensor.grad is None:
            tensor.grad = gradient
        else:
            with torch.no_grad():
                tensor.grad.add_(gradient)


def clear_jacs(tensors: Sequence[Tensor], set_to_none: bool) -> None:
    """Deletes the ``.jac`` of ``tensors`` (or zeroes it in place, like ``zero_grad``)."""
    for tensor in tensors:
        jacobian = get_jac(tensor)
        if jacobian is None or set_to_none:
            delete_jac(tensor)
        else:
            with torch.no_grad():
                jacobian.zero_()
