"""Gramian mode: weights from the Gramian of the losses (``autogram``), one weighted backward."""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from .._generalized_gramian import to_square
from ..aggregation import Flattening, GeneralizedWeighting, Weighting
from ..autogram._gather import gathering
from ._distributed import Sync
from ._gramian_ranks import global_losses, local_weights, summed_gradients
from ._jacobian_mode import NO_PARAMETER, used_leaves
from ._plan import Plan, backward_out_of_place


class GramianEngine(Protocol):
    """What Gramian mode needs of an engine (:class:`jdoptim.autogram.Engine` has it)."""

    batch_dim: int | None

    def compute_gramian(self, output: Tensor, /) -> Tensor: ...

    def parameters(self) -> Iterable[Tensor]: ...


def stack_losses(losses: list[Tensor]) -> Tensor:
    """One tensor of losses: a tensor as it is; several of one shape stacked; else concatenated."""
    if len(losses) == 1:
        return losses[0]
    if all(loss.shape == losses[0].shape for loss in losses):
        return torch.stack(losses)
    return torch.cat([loss.reshape(-1) for loss in losses])


def plan_gramian(
    engine: GramianEngine,
    weighting: Weighting | GeneralizedWeighting,
    groups: list[list[Tensor]],
    losses: list[Tensor],
    retain_graph: bool,
    sync: Sync | None = None,
) -> Plan:
    """Weights ``W(G)`` of the Gramian of the losses; the plan's backward writes ``Jᵀ w``.

    With an active ``sync``, ``G`` is the Gramian of the global losses (see ``_gramian_ranks``)
    and the plan holds the summed gradients instead of a backward."""
    output = stack_losses(losses)
    batch_dim = engine.batch_dim
    # Checked before a scalar loss becomes a vector of one loss: a mean-reduced loss has no
    # batch dimension.
    if batch_dim is not None and not -output.dim() <= batch_dim < output.dim():
        raise ValueError(
            f"`losses` must have the dimension `batch_dim={batch_dim}` of the engine, but the "
            f"losses have shape {list(output.shape)}. Pass losses with a batch dimension (e.g. "
            "reduction='none') or build the engine with batch_dim=None."
        )
    if output.dim() == 0:
        output = output.reshape(1)
    used = used_leaves([output])
    across = sync is not None and sync.active
    # Across ranks every parameter takes part (zero where unused): one layout for the all-reduce.
    inputs = [p for params in groups for p in params if across or id(p) in used]
    if not any(id(p) in used for p in inputs):
        raise ValueError(NO_PARAMETER)
    values = output.detach()
    state = None
    if sync is not None and across:
        with gathering(sync.process_group) as state:
            gramian = engine.compute_gramian(output)
            values = global_losses(state, values, batch_dim)
    else:
        gramian = engine.compute_gramian(output)
    if not isinstance(weighting, GeneralizedWeighting) and output.dim() > 1:
        weighting = Flattening(weighting)
    known_finite = bool(torch.isfinite(gramian).all())
    if known_finite:
        with nullcontext() if sync is None else sync.same_randomness(gramian.device):
            if weighting.requires_losses:
                weights = weighting(gramian, losses=values).detach()
            else:
                weights = weighting(gramian).detach()
        known_finite = bool(torch.isfinite(weights).all())
    else:
        weights = torch.full_like(values, math.nan)
    if weights.shape != values.shape:
        raise ValueError(
            f"`weighting` must return weights of the shape of the losses {list(values.shape)}, "
            f"but returned shape {list(weights.shape)}."
        )
    weights = weights.to(output.dtype)
    square = to_square(gramian).detach()
    # A finite Gramian only vouches for the gradients of the engine's own parameters (and not in
    # float16, where Jᵀ w can still overflow): the others are checked by `step`.
    covered = {id(p) for p in engine.parameters()}
    known_finite = known_finite and all(
        id(p) in covered and p.dtype != torch.float16 for p in inputs
    )

    if sync is not None and state is not None:
        mine = local_weights(state, weights, batch_dim)
        return Plan(
            grads=summed_gradients(output, mine, inputs, retain_graph, sync.process_group),
            weights=tuple(weights for _ in groups),
            gramians=tuple(square for _ in groups),
            known_finite=known_finite,
        )

    def weighted_backward() -> None:
        backward_out_of_place(output, weights, inputs, retain_graph)

    return Plan(
        weights=tuple(weights for _ in groups),
        gramians=tuple(square for _ in groups),
        known_finite=known_finite,
        backward=weighted_backward,
    )


def gramian_weighting_of(
    aggregator: Any, weighting: Weighting | GeneralizedWeighting | None
) -> Weighting | GeneralizedWeighting:
    """The weighting of Gramian mode: ``weighting``, else the aggregator's Gramian weighting."""
    if weighting is not None:
        return weighting
    return cast(Weighting, getattr(aggregator, "gramian_weighting"))  # noqa: B009
