"""Sharded aggregation across processes: each rank aggregates the columns of its shard only.

Instead of all-reducing the whole ``[m, N]`` Jacobian and aggregating all of it on every rank,
the per-rank Jacobians are reduce-scattered by columns (rank ``r`` receives the average of its
``1/R`` of the columns), the ``[m, m]`` Gramians of the shards are all-reduced (the Gramian of
the matrix is the sum of those of its column blocks), every rank computes the same weights from
the same Gramian, multiplies its own shard by them, and the update shards are all-gathered.

This applies to Gramian-weighted aggregators (``J ↦ Jᵀ W(J Jᵀ)``) and to the aggregators whose
columns are independent (:class:`~jdoptim.aggregation.GradDrop`,
:class:`~jdoptim.aggregation.TrimmedMean`); :func:`shardable` says which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..aggregation import Aggregator, GradDrop, GramianWeightedAggregator, TrimmedMean
from ..aggregation._bases import _compute_dtype, check_losses
from ..aggregation._rescaling import HIGH, LOW, Rescaling
from ._aggregate import Aggregated

_COLUMN_WISE = (GradDrop, TrimmedMean)


class GroupError(ValueError):
    """A ``ValueError`` of the aggregator of column block ``index``."""

    def __init__(self, index: int, error: ValueError) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


def is_gramian_weighted(aggregator: Aggregator) -> bool:
    """Whether ``aggregator`` is ``Jᵀ W(J Jᵀ)`` with the base class's forward."""
    return (
        isinstance(aggregator, GramianWeightedAggregator)
        and type(aggregator).forward is GramianWeightedAggregator.forward
    )


def is_column_wise(aggregator: Aggregator) -> bool:
    """Whether each column of ``aggregator``'s output depends on that column of the input only."""
    return any(
        isinstance(aggregator, kind) and type(aggregator).forward is kind.forward
        for kind in _COLUMN_WISE
    )


def shardable(aggregator: Aggregator) -> bool:
    """Whether ``aggregator`` can aggregate a Jacobian sharded by columns across ranks."""
    return is_gramian_weighted(aggregator) or is_column_wise(aggregator)


def sharded_aggregate(
    matrix: Tensor,
    widths: Sequence[int],
    aggregators: Sequence[Aggregator],
    process_group: Any,
    *,
    losses: Tensor | None = None,
    record_gramians: bool = False,
) -> tuple[Tensor, list[Aggregated | None]]:
    """Aggregates the average across ranks of the local ``[m, N]`` ``matrix``, sharded.

    ``matrix``'s consecutive column blocks of ``widths`` are aggregated by ``aggregators``
    (each :func:`shardable`); ``losses`` (the local ``[m]`` loss values, for aggregators that
    read them) are averaged across ranks too. Returns the full ``[N]`` update (the same on every
    rank) and, per block, its :class:`Aggregated` (``None`` for an empty block) whose update is
    the block's slice of the full one.

    Three collectives: a reduce-scatter of the matrix, an all-reduce of the shards' Gramians (and
    the loss values), an all-gather of the update; two more only when a Gramian must be rescaled
    to stay in range. Every rank must call it with the same ``m``, ``widths`` and aggregators.
    """
    world = dist.get_world_size(group=process_group)
    rank = dist.get_rank(group=process_group)
    m, total = matrix.shape
    chunk = max(1, -(-total // world))
    low, high = rank * chunk, min(total, (rank + 1) * chunk)
    high = max(low, high)

    # Reduce-scatter by columns: rank r receives the sum of columns [r·chunk, (r+1)·chunk).
    send = matrix.new_zeros(world, m, chunk)
    for r in range(world):
        start, stop = r * chunk, min(total, (r + 1) * chunk)
        if stop > start:
            send[r, :, : stop - start].copy_(matrix[:, start:stop])
    received = matrix.new_empty(m, chunk)
    _reduce_scatter(received, send, process_group)
    del send
    shard = received[:, : high - low].div_(world)

    # The columns of each block that lie in this rank's shard.
    bounds = []
    offsets = []  # where this rank's columns start within each block
    start = 0
    for width in widths:
        bounds.append((max(start, low) - low, min(start + width, high) - low))
        offsets.append(min(max(low - start, 0), width))
        start += width
    local = [shard[:, a : max(a, b)] for a, b in bounds]

    # One all-reduce: each block's partial Gramian (or a finiteness witness), then the losses.
    gramian_blocks = [
        width > 0 and (is_gramian_weighted(agg) or record_gramians)
        for width, agg in zip(widths, aggregators, strict=True)
    ]
    parts: list[Tensor] = []
    for i, (columns, aggregator) in enumerate(zip(local, aggregators, strict=True)):
        if widths[i] == 0:
            continue
        work = columns.to(_compute_dtype(columns.dtype))
        if gramian_blocks[i]:
            parts.append((work @ work.T).reshape(-1))
        if not is_gramian_weighted(aggregator):
            parts.append(work.sum().reshape(1))
    if losses is not None:
        parts.append(losses.detach().reshape(-1))
    reduced = _all_reduce_sum(parts, process_group)
    if losses is not None:
        losses = reduced.pop().view(losses.shape).div_(world)

    gramians: list[Tensor | None] = [None] * len(widths)
    witnesses: list[Tensor | None] = [None] * len(widths)
    for i, aggregator in enumerate(aggregators):
        if widths[i] == 0:
            continue
        if gramian_blocks[i]:
            gramians[i] = reduced.pop(0).view(m, m)
        if not is_gramian_weighted(aggregator):
            witnesses[i] = reduced.pop(0)
    _rescale_out_of_range(gramians, local, aggregators, process_group)

    results: list[Aggregated | None] = [None] * len(widths)
    update_shard = matrix.new_zeros(chunk)
    for i, (aggregator, columns, (a, b)) in enumerate(zip(aggregators, local, bounds, strict=True)):
        if widths[i] == 0:
            continue
        try:
            result = _aggregate_columns(
                aggregator, columns, gramians[i], witnesses[i], losses, offsets[i], widths[i]
            )
        except ValueError as error:
            raise GroupError(i, error) from error
        results[i] = result
        if b > a:
            update_shard[a:b] = result.update
    full = matrix.new_empty(world * chunk)
    _all_gather(full, update_shard, process_group)
    update = full[:total]
    start = 0
    for i, width in enumerate(widths):
        found = results[i]
        if found is not None:
            results[i] = found._replace(update=update[start : start + width])
        start += width
    return update, results


def _aggregate_columns(
    aggregator: Aggregator,
    columns: Tensor,
    gramian: Tensor | None,
    witness: Tensor | None,
    losses: Tensor | None,
    offset: int,
    width: int,
) -> Aggregated:
    """The update of this rank's ``columns`` of one block (the block has ``width`` columns and
    this rank holds those from ``offset`` on)."""
    nan = columns.new_full((columns.shape[1],), math.nan)
    if is_gramian_weighted(aggregator):
        assert gramian is not None and isinstance(aggregator, GramianWeightedAggregator)
        m = columns.shape[0]
        if aggregator.requires_losses:
            losses = check_losses(losses, m, type(aggregator).__name__, gramian)
        if not bool(torch.isfinite(gramian).all()):
            return Aggregated(nan, None, gramian.detach(), False)
        weights = aggregator._weigh(gramian, losses)
        update = aggregator._call(columns, losses, weights=weights)
        finite = bool(torch.isfinite(weights).all())
        return Aggregated(update, weights.detach(), gramian.detach(), finite)
    assert witness is not None
    if not bool(torch.isfinite(witness).all()):
        return Aggregated(nan, None, gramian, False)
    if isinstance(aggregator, GradDrop):
        # One uniform per column of the block, drawn in the order of the unsharded block: this
        # rank's columns get the numbers that one process would have drawn for them.
        _draw(offset, columns)
        update = aggregator(columns)
        _draw(width - offset - columns.shape[1], columns)
    else:
        update = aggregator(columns)
    return Aggregated(update, None, gramian, False)


def _draw(count: int, like: Tensor) -> None:
    if count > 0:
        torch.rand(count, device=like.device, dtype=like.dtype)


def _rescale_out_of_range(
    gramians: list[Tensor | None],
    local: list[Tensor],
    aggregators: Sequence[Aggregator],
    process_group: Any,
) -> None:
    """Recomputes, scaled by a power of two, the Gramians whose diagonal is out of range, for
    weightings that do not depend on the Gramian's scale (the same rule as one process).

    Every rank holds the same Gramians, so every rank takes the same decision."""
    todo = []
    for i, gramian in enumerate(gramians):
        if gramian is None:
            continue
        aggregator = aggregators[i]
        rescaling: Rescaling = (
            aggregator.gramian_weighting.gramian_rescaling
            if isinstance(aggregator, GramianWeightedAggregator) and is_gramian_weighted(aggregator)
            else "any"
        )
        if rescaling == "none":
            continue
        top = float(gramian.diagonal().max()) if gramian.numel() else 0.0
        if top == 0.0 or (top < 4.0**HIGH and (rescaling == "down" or top >= 4.0**LOW)):
            continue
        todo.append((i, rescaling))
    if not todo:
        return
    peaks = torch.stack(
        [
            local[i].detach().abs().amax().to(torch.float64)
            if local[i].numel()
            else torch.zeros((), dtype=torch.float64, device=local[i].device)
            for i, _ in todo
        ]
    )
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX, group=process_group)
    parts = []
    for (i, rescaling), peak in zip(todo, peaks, strict=True):
        columns = local[i]
        work = columns.to(_compute_dtype(columns.dtype))
        _, exponent = torch.frexp(peak)
        low = LOW + 1 if rescaling == "any" else torch.iinfo(exponent.dtype).min
        shift = int((exponent.clamp(min=low, max=HIGH) - exponent).item())
        max_shift = math.frexp(torch.finfo(work.dtype).max)[1] - 1
        shift = max(-max_shift, min(max_shift, shift))
        scaled = work * math.ldexp(1.0, shift)
        parts.append((scaled @ scaled.T).reshape(-1))
    reduced = _all_reduce_sum(parts, process_group)
    for (i, _), gramian in zip(todo, reduced, strict=True):
        previous = gramians[i]
        assert previous is not None
        gramians[i] = gramian.view(previous.shape)


def _all_reduce_sum(parts: list[Tensor], process_group: Any) -> list[Tensor]:
    """The sums across ranks of ``parts`` (in one collective), each in its own dtype."""
    if not parts:
        return []
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    buffer = torch.cat([part.to(dtype) for part in parts])
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=process_group)
    out = []
    offset = 0
    for part in parts:
        out.append(buffer[offset : offset + part.numel()].to(part.dtype))
        offset += part.numel()
    return out


def _reduce_scatter(output: Tensor, send: Tensor, process_group: Any) -> None:
    collective = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    collective(output.view(-1), send.view(-1), op=dist.ReduceOp.SUM, group=process_group)


def _all_gather(output: Tensor, shard: Tensor, process_group: Any) -> None:
    collective = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    collective(output, shard, group=process_group)
