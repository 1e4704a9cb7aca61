"""Jacobian mode: the Jacobian of the losses with respect to every group, aggregated per group."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..autojac._checks import check_multipliers
from ..autojac._graph import leaves_in_order_of_first_use
from ..autojac._jacobian import compute_jacobians, number_of_rows
from ._context import Context
from ._plan import Plan
from ._sharded import reduce_and_aggregate

NO_PARAMETER = (
    "`losses` must depend on some parameter of the optimizer that requires grad, but they depend "
    "on none of them."
)


def plan_jacobian(
    context: Context,
    losses: list[Tensor],
    grad_tensors: Tensor | Sequence[Tensor] | None,
    retain_graph: bool,
    aggregate: bool,
) -> Plan:
    """The plan of ``autojac.backward`` over the optimizer's parameters then, when
    ``aggregate``, ``jac_to_grad`` per group; otherwise the Jacobians go to ``.jac``."""
    jac_outputs = rows_of_grad_tensors(losses, grad_tensors)
    # With a process group every parameter gets a Jacobian (zero where unused), so that all
    # ranks share the layout of the reduced buffer.
    used = None if context.sync.active else used_leaves(losses)
    blocks = context.blocks(used)
    inputs = [p for block in blocks for p in block.params]
    if not inputs:
        raise ValueError(NO_PARAMETER)
    jacobians = compute_jacobians(
        losses, inputs, jac_outputs, retain_graph, context.parallel_chunk_size, shared_buffer=True
    )
    values = loss_values(losses, grad_tensors)
    if not aggregate:
        return Plan(jacs=list(zip(inputs, jacobians, strict=True)), losses=values)
    m = number_of_rows(losses, jac_outputs)
    return reduce_and_aggregate(
        context, blocks, jacobians, m, values if context.needs_losses else None
    )


def used_leaves(roots: list[Tensor]) -> set[int]:
    """The ids of the leaves requiring grad from which ``roots`` are computed."""
    leaves, _ = leaves_in_order_of_first_use(roots)
    return {id(leaf) for leaf in leaves}


def rows_of_grad_tensors(
    losses: list[Tensor], grad_tensors: Tensor | Sequence[Tensor] | None
) -> list[Tensor] | None:
    """``jac_outputs`` giving one row per loss: row i is ``grad_tensors[i]`` on loss i."""
    if grad_tensors is None:
        return None
    values = check_multipliers(grad_tensors, losses, "grad_tensors", leading_dim=False)
    assert values is not None
    rows = []
    for i, (value, loss) in enumerate(zip(values, losses, strict=True)):
        row = loss.new_zeros((len(losses), *loss.shape))
        row[i] = value.detach().to(loss.dtype)
        rows.append(row)
    return rows


def loss_values(losses: list[Tensor], grad_tensors: Tensor | Sequence[Tensor] | None) -> Tensor:
    """The detached value of each row's objective: every element of the losses, or, with
    ``grad_tensors``, ``(grad_tensors[i] * losses[i]).sum()`` for each loss."""
    if grad_tensors is None:
        return torch.cat([loss.detach().reshape(-1) for loss in losses])
    multipliers = [grad_tensors] if isinstance(grad_tensors, Tensor) else list(grad_tensors)
    return torch.stack(
        [(g.detach() * loss.detach()).sum() for g, loss in zip(multipliers, losses, strict=True)]
    )
