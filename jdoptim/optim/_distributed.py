"""What the optimizer does across processes: one all-reduce per step, the same randomness."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from .._shared_random import SharedRandomness
from ..autojac._all_reduce import all_reduce_buffer
from ..autojac._matrix import split_update, to_matrix


class Sync:
    """The process group of a distributed optimizer (or none), and its shared generator.

    With a process group, :meth:`all_reduce` averages a flat buffer across the ranks (one
    collective per step), and :meth:`same_randomness` makes aggregators that draw random numbers
    draw the same ones on every rank. Without one, both do nothing.
    """

    def __init__(self, process_group: Any) -> None:
        self.process_group = process_group
        self.shared_random = None if process_group is None else SharedRandomness(process_group)

    @property
    def active(self) -> bool:
        return self.process_group is not None

    def all_reduce(self, buffer: Tensor) -> None:
        if self.process_group is not None:
            all_reduce_buffer(buffer, self.process_group)

    def same_randomness(self, device: torch.device) -> AbstractContextManager[Any]:
        if self.shared_random is None:
            return nullcontext()
        return self.shared_random.fork(device)


def reduce_jacobian(
    sync: Sync, jacobians: list[Tensor], m: int, extra: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """The ``[m, N]`` matrix of ``jacobians`` and the tensors ``extra``, averaged across the ranks
    in one collective (the extra tensors travel at the end of the Jacobian's buffer).

    Without a process group, the matrix (no copy when possible) and ``extra`` as they are.
    """
    if not sync.active:
        return to_matrix(jacobians, m)[1], extra
    buffer, matrix = to_matrix(jacobians, m, extra=extra)
    tail = buffer[matrix.numel() :]
    for part, tensor in zip(split_update(tail, extra), extra, strict=True):
        part.copy_(tensor)
    sync.all_reduce(buffer)
    reduced = tail.clone()  # so that what is kept does not hold the Jacobian's buffer alive
    return matrix, split_update(reduced, extra)
