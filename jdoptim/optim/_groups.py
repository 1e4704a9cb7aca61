"""The per-group aggregation shared by Jacobian mode, multi-task mode and ``aggregate()``.

The parameters of each group are consecutive column blocks of one ``[m, N]`` matrix; each block
is aggregated by the group's aggregator (``autojac``'s ``aggregate_matrix``, as in
``jac_to_grad``) and cut back into one update per parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..aggregation import Aggregator
from ..autojac._aggregate import aggregate_matrix
from ..autojac._jac_to_grad import check_update
from ..autojac._jacobian import storage_key
from ..autojac._matrix import column_blocks, split_update
from ._plan import Plan


@dataclass(frozen=True)
class Block:
    """The parameters of one group that get a column block of the Jacobian, and its aggregator."""

    group_index: int
    params: list[Tensor]
    aggregator: Aggregator


def aggregate_blocks(
    blocks: Sequence[Block],
    matrix: Tensor,
    n_groups: int,
    record_gramians: bool,
    extra: Sequence[tuple[Tensor, Tensor]] = (),
    extra_finite: bool = True,
    losses: Tensor | None = None,
) -> Plan:
    """Aggregates each block of ``matrix``; the plan also carries the ``extra`` updates.

    ``losses`` (the ``[m]`` loss values) go to the aggregators that read them. A ``ValueError``
    of an aggregator is raised again with the group it failed on.
    """
    weights: list[Tensor | None] = [None] * n_groups
    gramians: list[Tensor | None] = [None] * n_groups
    grads: list[tuple[Tensor, Tensor]] = list(extra)
    known_finite = extra_finite
    widths = [sum(p.numel() for p in block.params) for block in blocks]
    protected = storage_key(matrix) if matrix.numel() else None
    for block, columns in zip(blocks, column_blocks(matrix, widths), strict=True):
        if not block.params:
            continue
        i = block.group_index
        try:
            result = aggregate_matrix(
                block.aggregator, columns, record_gramian=record_gramians, losses=losses
            )
        except ValueError as error:
            raise ValueError(
                f"The aggregator {block.aggregator} of parameter group {i} rejected the Jacobian "
                f"of shape {list(columns.shape)} (one row per loss): {error}"
            ) from error
        check_update(result.update, columns, block.aggregator)
        update = result.update
        if update.numel() and storage_key(update) == protected:
            update = update.clone()  # a .grad must not keep the whole Jacobian alive
        weights[i], gramians[i] = result.weights, result.gramian
        # In float16, w @ J of finite weights and rows can still overflow.
        known_finite = (
            known_finite
            and result.known_finite
            and all(p.dtype != torch.float16 for p in block.params)
        )
        grads.extend(zip(block.params, split_update(update, block.params), strict=True))
    return Plan(
        grads=grads, weights=tuple(weights), gramians=tuple(gramians), known_finite=known_finite
    )
