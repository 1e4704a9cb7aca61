"""The aggregation of a distributed step: sharded across the ranks when every group allows it.

With a process group, Jacobian mode and ``aggregate()`` hand the local Jacobian here. When every
group's aggregator is Gramian-weighted or column-wise, the Jacobian is reduce-scattered by
columns and each rank aggregates its shard (``autojac``'s ``sharded_aggregate``: about half the
traffic of an all-reduce, and ``J Jᵀ``, ``Jᵀ w`` divided across the ranks); otherwise it is
all-reduced and every rank aggregates all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..autojac._matrix import split_update, to_matrix
from ..autojac._sharded import GroupError, shardable, sharded_aggregate
from ._context import Context
from ._distributed import reduce_jacobian
from ._groups import Block, aggregate_blocks
from ._plan import Plan


def uses_sharding(context: Context, blocks: Sequence[Block]) -> bool:
    """Whether the step aggregates sharded: a process group, and shardable aggregators only."""
    return context.sync.active and all(
        shardable(block.aggregator) for block in blocks if block.params
    )


def reduce_and_aggregate(
    context: Context,
    blocks: Sequence[Block],
    jacobians: list[Tensor],
    m: int,
    losses: Tensor | None,
) -> Plan:
    """The plan of the step from the local ``jacobians`` (``[m, *p.shape]`` of the blocks'
    parameters, in order), averaged across ranks; ``losses`` are the local loss values (given
    only when some aggregator reads them)."""
    if not uses_sharding(context, blocks):
        extra = [losses] if losses is not None else []
        matrix, reduced = reduce_jacobian(context.sync, jacobians, m, extra)
        with context.sync.same_randomness(matrix.device):
            return aggregate_blocks(
                blocks,
                matrix,
                len(context.groups),
                context.record_gramians,
                losses=reduced[0] if reduced else None,
            )
    _, matrix = to_matrix(jacobians, m)
    widths = [sum(p.numel() for p in block.params) for block in blocks]
    aggregators = [block.aggregator for block in blocks]
    with context.sync.same_randomness(matrix.device):
        try:
            _, results = sharded_aggregate(
                matrix,
                widths,
                aggregators,
                context.sync.process_group,
                losses=losses,
                record_gramians=context.record_gramians,
            )
        except GroupError as error:
            block = blocks[error.index]
            raise ValueError(
                f"The aggregator {block.aggregator} of parameter group {block.group_index} "
                f"rejected the Jacobian of shape [{m}, {widths[error.index]}] (one row per loss): "
                f"{error.error}"
            ) from error.error
    n_groups = len(context.groups)
    weights: list[Tensor | None] = [None] * n_groups
    gramians: list[Tensor | None] = [None] * n_groups
    grads: list[tuple[Tensor, Tensor]] = []
    known_finite = True
    for block, result in zip(blocks, results, strict=True):
        if result is None or not block.params:
            continue
        i = block.group_index
        weights[i], gramians[i] = result.weights, result.gramian
        # In float16, w @ J of finite weights and rows can still overflow.
        known_finite = (
            known_finite
            and result.known_finite
            and all(p.dtype != torch.float16 for p in block.params)
        )
        grads.extend(zip(block.params, split_update(result.update, block.params), strict=True))
    return Plan(
        grads=grads, weights=tuple(weights), gramians=tuple(gramians), known_finite=known_finite
    )
