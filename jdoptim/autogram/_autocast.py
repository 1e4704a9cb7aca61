"""Autocast and the engine: replays under the autocast state of the forward pass, Gramians
accumulated in float32 or wider."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import ExitStack

import torch

#: The autocast state of one device type: (device type, enabled, dtype).
AutocastState = tuple[str, bool, torch.dtype]


def _is_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))  # torch >= 2.4
    except TypeError:  # torch 2.3: one function per device type
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return device_type == "cuda" and bool(torch.is_autocast_enabled())


def _dtype(device_type: str) -> torch.dtype:
    getter = getattr(torch, "get_autocast_dtype", None)
    if getter is not None:  # torch >= 2.4
        return getter(device_type)  # type: ignore[no-any-return]
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype()
    return torch.get_autocast_gpu_dtype()


def autocast_states(device_types: Collection[str]) -> tuple[AutocastState, ...]:
    """The current autocast state of each of ``device_types`` (and of the CPU)."""
    types = ("cpu", "cuda") if "cuda" in device_types else ("cpu",)
    return tuple(
        (device_type, _is_enabled(device_type), _dtype(device_type)) for device_type in types
    )


def replaying_under(states: tuple[AutocastState, ...]) -> ExitStack:
    """A context that sets autocast as it was when ``states`` were recorded (enabled or not),
    whatever the caller's autocast state, so that a replay computes in the dtypes of the
    forward pass."""
    stack = ExitStack()
    for device_type, enabled, dtype in states:
        stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled))
    return stack


def without_autocast() -> ExitStack:
    """A context in which autocast is off (on the CPU, and on CUDA when available): the
    engine's own products must not drop to half precision when :meth:`Engine.compute_gramian`
    is called inside an autocast block."""
    stack = ExitStack()
    stack.enter_context(torch.autocast("cpu", enabled=False))
    if torch.cuda.is_available():
        stack.enter_context(torch.autocast("cuda", enabled=False))
    return stack


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which Gramians of tensors of ``dtype`` are accumulated: float32 for half
    precisions (the Gramian of GradScaler-scaled losses overflows float16), else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def as_computed(x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input ``x`` and output gradient ``delta`` of a linear layer or convolution, in the
    accumulation dtype, with ``x`` rounded as the layer used it.

    Under autocast, a layer receiving a float32 ``x`` computes in half precision: it rounds
    ``x`` to the dtype of its output, which is also that of ``delta``.
    """
    if x.dtype != delta.dtype and delta.dtype.is_floating_point:
        x = x.to(delta.dtype)
    dtype = accumulation_dtype(delta.dtype)
    return x.to(dtype), delta.to(dtype)
