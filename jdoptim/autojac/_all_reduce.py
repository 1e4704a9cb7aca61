"""The one collective of distributed Jacobian descent: a flat buffer averaged across ranks."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor


def check_initialized() -> None:
    """Raises a ``ValueError`` unless a default process group has been initialised."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            "`process_group` needs an initialised torch.distributed default process group: call "
            "torch.distributed.init_process_group first."
        )


def all_reduce_buffer(buffer: Tensor, process_group: Any, *, average: bool = True) -> None:
    """Sums ``buffer`` in place over the ranks of ``process_group`` (one collective), then
    divides by the number of ranks when ``average``."""
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=process_group)
    if average:
        buffer.div_(dist.get_world_size(group=process_group))
