"""State of the stateful methods: buffers that exist from construction and load any shape."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class StatefulModule(nn.Module):
    """A module whose state lives in buffers registered at construction.

    Each state buffer starts empty (shape ``[0]``; counters: an int64 scalar 0), so that
    ``state_dict()`` always has the same keys. Loading a state dict gives each buffer the saved
    shape and dtype (on the module's device), so a fresh instance resumes a run exactly, and
    the state dict of a never-called instance restores the initial state. :meth:`reset` goes
    back to the initial state.
    """

    def __init__(self) -> None:
        super().__init__()
        self._state_names: list[str] = []

    def _add_state(self, name: str, dtype: torch.dtype = torch.float64) -> None:
        """Registers an empty state buffer (``[0]``), or an int64 counter for ``torch.int64``."""
        initial = (
            torch.zeros((), dtype=dtype) if dtype == torch.int64 else torch.empty(0, dtype=dtype)
        )
        self.register_buffer(name, initial)
        self._state_names.append(name)

    def _set_state(self, name: str, value: Tensor) -> None:
        """Stores ``value`` (detached, copied) as the state buffer ``name``."""
        self._buffers[name] = value.detach().clone()

    def _state(self, name: str) -> Tensor:
        buffer = self._buffers[name]
        assert buffer is not None
        return buffer

    def reset(self) -> None:
        """Forgets the state: the next call behaves like the first one."""
        for name in self._state_names:
            buffer = self._state(name)
            if buffer.dtype == torch.int64 and buffer.dim() == 0:
                self._buffers[name] = torch.zeros((), dtype=torch.int64, device=buffer.device)
            else:
                self._buffers[name] = torch.empty(0, dtype=buffer.dtype, device=buffer.device)
        for child in self.children():
            reset = getattr(child, "reset", None)
            if callable(reset):
                reset()

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
        # The saved state may have any size (it depends on the inputs seen): take its shape and
        # dtype before the values are copied in.
        for name in self._state_names:
            saved = state_dict.get(prefix + name)
            if isinstance(saved, Tensor):
                device = self._state(name).device
                self._buffers[name] = torch.empty(saved.shape, dtype=saved.dtype, device=device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
