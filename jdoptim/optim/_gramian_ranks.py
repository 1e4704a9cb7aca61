"""Gramian mode across ranks: the Gramian of the global losses, the same weights on every rank.

With a process group, the engine computes under ``autogram``'s gathering the Gramian of the
losses of all ranks (concatenated along the batch dimension, or averaged without one), every rank
weights it identically, and each rank differentiates its own losses with its slice of the
weights; the gradients are then summed across ranks in one all-reduce. They are computed with
``torch.autograd.grad``, so a ``DistributedDataParallel`` wrapper's reducer never runs (and
never averages them a second time).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..autogram._gather import Gathering
from ..autojac._all_reduce import all_reduce_buffer
from ..autojac._matrix import split_update


def global_losses(state: Gathering, output: Tensor, batch_dim: int | None) -> Tensor:
    """The losses of all ranks: concatenated along ``batch_dim``, or averaged without one."""
    if batch_dim is None:
        return state.averaged(output)
    return state.along(output, batch_dim % output.dim(), state.sizes)


def local_weights(state: Gathering, weights: Tensor, batch_dim: int | None) -> Tensor:
    """This rank's part of the global ``weights``: its slice along ``batch_dim``, or all the
    weights divided by the number of ranks (the global losses are then averages)."""
    if batch_dim is None:
        return weights / state.world
    start = sum(state.sizes[: state.rank])
    return weights.narrow(batch_dim % weights.dim(), start, state.sizes[state.rank])


def summed_gradients(
    output: Tensor,
    weights: Tensor,
    inputs: list[Tensor],
    retain_graph: bool,
    process_group: Any,
) -> list[tuple[Tensor, Tensor]]:
    """``Σ_r J_rᵀ w_r`` for each input, the same on every rank (one all-reduce of one buffer)."""
    grads = torch.autograd.grad(
        output, inputs, grad_outputs=weights, retain_graph=retain_graph, allow_unused=True
    )
    buffer = torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1).to(weights.dtype)
            for p, g in zip(inputs, grads, strict=True)
        ]
    )
    all_reduce_buffer(buffer, process_group, average=False)
    return list(zip(inputs, split_update(buffer, inputs), strict=True))
