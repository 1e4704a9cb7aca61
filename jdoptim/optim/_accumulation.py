"""Gradient accumulation: Jacobians of micro-batches summed in ``.jac``, aggregated once.

``backward(losses, aggregate=False)`` plans Jacobians for ``.jac`` (the modes do that) and
:func:`check_rows` keeps the micro-batches consistent; :func:`plan_accumulated` then aggregates
what was accumulated, like one ``jac_to_grad`` per group.
"""

from __future__ import annotations

from torch import Tensor

from ..autojac._jac_fields import get_jac
from ..autojac._matrix import to_matrix
from ._context import Context
from ._groups import Block, aggregate_blocks
from ._plan import Plan
from ._sharded import reduce_and_aggregate, uses_sharding


def check_rows(jacs: list[tuple[Tensor, Tensor]]) -> None:
    """Checks that the new Jacobians have as many rows as those already accumulated."""
    for param, jacobian in jacs:
        existing = get_jac(param)
        if existing is not None and existing.shape != jacobian.shape:
            raise ValueError(
                "`losses` must give as many objectives in every micro-batch of a gradient "
                f"accumulation, but a parameter of shape {list(param.shape)} already holds the "
                f"Jacobian of {existing.shape[0]} objectives and these losses give "
                f"{jacobian.shape[0]}. Call `opt.aggregate()` (or `opt.zero_grad()`) first."
            )


def plan_accumulated(context: Context, losses: Tensor | None) -> Plan:
    """Aggregates the accumulated ``.jac`` of each group into ``.grad`` and clears it;
    ``losses`` (the summed loss values of the micro-batches) go to aggregators that read them."""
    blocks = [
        Block(i, [p for p in params if get_jac(p) is not None], context.aggregators[i])
        for i, params in enumerate(context.groups)
    ]
    params = [p for block in blocks for p in block.params]
    if not params:
        raise ValueError(
            "`aggregate` found no accumulated Jacobian: call `opt.backward(losses, "
            "aggregate=False)` on each micro-batch first."
        )
    jacobians = [get_jac(p) for p in params]
    present = [j for j in jacobians if j is not None]
    wanted = losses if losses is not None and context.needs_losses else None
    if context.sync.active and wanted is None and not uses_sharding(context, blocks):
        # Reduced in a copy: the accumulated .jac stay as they were if anything fails later.
        # (With extra tensors the buffer is a copy anyway; sharding reads them only.)
        present = [jacobian.clone() for jacobian in present]
    m = present[0].shape[0]
    del jacobians
    if context.sync.active:
        plan = reduce_and_aggregate(context, blocks, present, m, wanted)
    else:
        matrix = to_matrix(present, m)[1]
        plan = aggregate_blocks(
            blocks, matrix, len(context.groups), context.record_gramians, losses=losses
        )
    del present
    plan.clear_jacs = params
    return plan


def check_aggregate_available(gramian_mode: bool, scalarizer_mode: bool) -> None:
    """Refuses ``aggregate()`` in the modes that never form the Jacobian."""
    if gramian_mode or scalarizer_mode:
        mode = "scalarizer mode" if scalarizer_mode else "Gramian mode (with `engine`)"
        raise ValueError(
            f"`aggregate` is not available in {mode}: gradient accumulation of Jacobians needs "
            "Jacobian mode."
        )


def check_nothing_pending(pending: bool, name: str) -> None:
    """Refuses ``name`` while an accumulation awaits ``aggregate()``."""
    if pending:
        raise ValueError(
            f"`{name}` was called while Jacobians accumulated by `backward(..., "
            "aggregate=False)` await aggregation: call `opt.aggregate()` first (or "
            "`opt.zero_grad()` to drop them)."
        )
