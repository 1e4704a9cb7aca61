"""The Gramian across the ranks of a process group, from the per-sample quantities of each layer.

Under :func:`gathering`, :meth:`Engine.compute_gramian` computes the Gramian of the *global*
losses instead of the local ones:

- with a batch dimension, the losses of all ranks concatenated along it (``B`` = the sum of the
  local batch sizes, in the order of the ranks), cross-rank blocks included;
- without one, the ``m`` losses averaged across ranks.

Each group of calls gathers what its Gramian is computed from, never the Jacobian: for a linear
layer or a convolution, the inputs and output gradients of the call (the size of activations);
for other layers, the per-sample Jacobians of their parameters with a batch dimension (the size
of the batch times that of the layer's parameters, e.g. ``2·C`` for a GroupNorm), or their
Jacobian summed over the rank's samples without one. Every rank then computes the same Gramian.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._autocast import accumulation_dtype

_CURRENT: ContextVar[Gathering | None] = ContextVar("jdoptim_autogram_gathering", default=None)


def current() -> Gathering | None:
    """The gathering in effect, if any."""
    return _CURRENT.get()


@contextmanager
def gathering(process_group: Any) -> Iterator[Gathering]:
    """Makes :meth:`Engine.compute_gramian` compute the Gramian of the global losses."""
    state = Gathering(process_group)
    token = _CURRENT.set(state)
    try:
        yield state
    finally:
        _CURRENT.reset(token)


class Gathering:
    """The process group, and the batch size of every rank (known once the losses are seen)."""

    def __init__(self, process_group: Any) -> None:
        self.process_group = process_group
        self.world = dist.get_world_size(group=process_group)
        self.rank = dist.get_rank(group=process_group)
        self.sizes: list[int] = []

    def global_samples(self, samples: int, device: torch.device) -> int:
        """Exchanges the local batch sizes (one all-gather); returns their sum."""
        self.sizes = self._sizes(samples, device)
        return sum(self.sizes)

    def _sizes(self, size: int, device: torch.device) -> list[int]:
        local = torch.tensor([size], dtype=torch.int64, device=device)
        everyone = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(everyone, local, group=self.process_group)
        return [int(s.item()) for s in everyone]

    def along(self, tensor: Tensor, dim: int, sizes: list[int] | None = None) -> Tensor:
        """The tensors of all ranks concatenated along ``dim`` (sizes may differ there)."""
        if sizes is None:
            sizes = self._sizes(tensor.shape[dim], tensor.device)
        top = max(sizes)
        padded = tensor
        if tensor.shape[dim] < top:
            pad_shape = list(tensor.shape)
            pad_shape[dim] = top - tensor.shape[dim]
            padded = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
        padded = padded.contiguous()
        pieces = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(pieces, padded, group=self.process_group)
        return torch.cat([p.narrow(dim, 0, s) for p, s in zip(pieces, sizes, strict=True)], dim)

    def averaged(self, tensor: Tensor) -> Tensor:
        """The average of ``tensor`` across ranks."""
        total = tensor.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.process_group)
        return total / self.world

    def group_gramian(
        self,
        calls: list[Any],
        deltas: dict[Any, list[Tensor | None]],
        used: dict[Any, list[tuple[str, nn.Parameter]]],
        batched: bool,
    ) -> Tensor:
        """The global ``[R, R]`` Gramian of a group of calls (``R = T · B`` global rows)."""
        from ._convolution import convolution_gramian, is_plain_convolution
        from ._gramian import call_jacobians
        from ._linear import is_plain_linear, linear_gramian

        if len(calls) == 1:
            call = calls[0]
            names = {name for name, _ in used[call]}
            delta = deltas[call][0] if len(deltas[call]) == 1 else None
            simple = (
                len(call.args) == 1
                and isinstance(call.args[0], Tensor)
                and not call.kwargs
                and delta is not None
                and names <= {"weight", "bias"}
            )
            if simple and delta is not None:
                x = call.args[0]
                if is_plain_linear(call.module):
                    if batched:
                        x = self.along(x, 0, self.sizes)
                        delta = self.along(delta, 1, self.sizes)
                    else:
                        x = self.along(x.reshape(-1, x.shape[-1]), 0)
                        rows = delta.shape[0]
                        delta = self.along(delta.reshape(rows, -1, delta.shape[-1]), 1)
                        delta = delta / self.world
                    return linear_gramian(call.module, x, delta, names, batched)
                if batched and is_plain_convolution(call.module, x):
                    x = self.along(x, 0, self.sizes)
                    delta = self.along(delta, 1, self.sizes)
                    budget = max(x.numel(), delta[0].numel())
                    return convolution_gramian(call.module, x, delta, names, budget)

        jacobians: dict[int, Tensor] = {}
        for call in calls:
            if all(delta is None for delta in deltas[call]):
                continue
            named_parameters = used[call]
            for (_, parameter), jacobian in zip(
                named_parameters,
                call_jacobians(call, deltas[call], named_parameters, batched),
                strict=True,
            ):
                key = id(parameter)
                jacobians[key] = jacobian if key not in jacobians else jacobians[key] + jacobian
        first = next(d for call in calls for d in deltas[call] if d is not None)
        rows = first.shape[0]
        size = rows * (sum(self.sizes) if batched else 1)
        gramian = first.new_zeros(size, size, dtype=accumulation_dtype(first.dtype))
        for jacobian in jacobians.values():
            # [T, B, *shape]: the per-sample Jacobians of all ranks, or the averaged Jacobian.
            merged = self.along(jacobian, 1, self.sizes) if batched else self.averaged(jacobian)
            matrix = merged.reshape(size, -1).to(gramian.dtype)
            gramian += matrix @ matrix.T
        return gramian
