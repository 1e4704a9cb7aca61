"""Deprecated top-level aliases of :mod:`jdoptim.autojac` functions, kept for compatibility."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from torch import Tensor

from . import autojac


def _warn(name: str) -> None:
    warnings.warn(
        f"`jdoptim.{name}` is deprecated and will be removed in a future release; use "
        f"`jdoptim.autojac.{name}` instead (`from jdoptim.autojac import {name}`).",
        DeprecationWarning,
        stacklevel=3,
    )


def backward(
    tensors: Tensor | Sequence[Tensor],
    /,
    *,
    jac_tensors: Tensor | Sequence[Tensor] | None = None,
    inputs: Tensor | Iterable[Tensor] | None = None,
    retain_graph: bool = False,
    parallel_chunk_size: int | None = None,
) -> None:
    """Deprecated alias of :func:`jdoptim.autojac.backward`, which it calls.

    Emits a :class:`DeprecationWarning` naming the new import path on every call.

    Example:
        >>> import warnings
        >>> import torch
        >>> import jdoptim
        >>> param = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     jdoptim.backward(param * 3)
        >>> caught[0].category.__name__, "jdoptim.autojac.backward" in str(caught[0].message)
        ('DeprecationWarning', True)
        >>> param.jac
        tensor([[3., 0.],
                [0., 3.]])
    """
    _warn("backward")
    autojac.backward(
        tensors,
        jac_tensors=jac_tensors,
        inputs=inputs,
        retain_graph=retain_graph,
        parallel_chunk_size=parallel_chunk_size,
    )


def mtl_backward(
    tensors: Tensor | Sequence[Tensor],
    /,
    features: Tensor | Sequence[Tensor],
    *,
    grad_tensors: Tensor | Sequence[Tensor] | None = None,
    tasks_params: Iterable[Iterable[Tensor]] | None = None,
    shared_params: Iterable[Tensor] | None = None,
    retain_graph: bool = False,
    parallel_chunk_size: int | None = None,
) -> None:
    """Deprecated alias of :func:`jdoptim.autojac.mtl_backward`, which it calls.

    Emits a :class:`DeprecationWarning` naming the new import path on every call.

    Example:
        >>> import warnings
        >>> import torch
        >>> import jdoptim
        >>> shared = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> task = torch.tensor(3.0, requires_grad=True)
        >>> features = shared * 2
        >>> losses = [features.sum() * task, features.prod()]
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     jdoptim.mtl_backward(losses, features)
        >>> "jdoptim.autojac.mtl_backward" in str(caught[0].message)
        True
        >>> shared.jac, task.grad
        (tensor([[6., 6.],
                [8., 4.]]), tensor(6.))
    """
    _warn("mtl_backward")
    autojac.mtl_backward(
        tensors,
        features,
        grad_tensors=grad_tensors,
        tasks_params=tasks_params,
        shared_params=shared_params,
        retain_graph=retain_graph,
        parallel_chunk_size=parallel_chunk_size,
    )
