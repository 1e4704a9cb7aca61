"""Silences torch's notice that an operator has no batching rule, inside the engine only.

The engine vectorises backward passes and replays with :mod:`torch.func`; for operators such
as the fused attention kernels, torch then falls back to a loop and says so. The result is
exact either way, and the notice concerns the engine's internals, not the user's code.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_vmap() -> Iterator[None]:
    """A context in which the fallback notices of :func:`torch.vmap` are not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule.*")
        yield
