"""Aggregation of an ``[m, N]`` Jacobian, shared by ``jac_to_grad`` and the optimizer."""

from __future__ import annotations

import cmath
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..aggregation import Aggregator, GramianWeightedAggregator
from ..aggregation._rescaling import rescaled_gramian


class Aggregated(NamedTuple):
    """The result of :func:`aggregate_matrix`.

    ``known_finite`` is True when the update is known to be finite without looking at it: the
    Gramian was finite (so was the matrix, since the diagonal of ``J Jᵀ`` sums the squares of each
    row) and so were the weights.
    """

    update: Tensor
    weights: Tensor | None
    gramian: Tensor | None
    known_finite: bool


def aggregate_matrix(
    aggregator: Aggregator,
    matrix: Tensor,
    *,
    record_gramian: bool = False,
    losses: Tensor | None = None,
) -> Aggregated:
    """``aggregator.aggregate(matrix)``, such that a non-finite matrix never reaches a solver.

    A matrix holding inf or NaN gives a NaN update (so that a ``GradScaler`` sees the overflow);
    a Gramian-weighted aggregator detects it on its ``[m, m]`` Gramian, the others by one pass
    over the matrix. ``record_gramian`` also computes the Gramian of aggregators that do not
    need one (for diagnostics). ``losses`` (detached here) go to aggregators that read them.
    """
    if losses is not None:
        losses = losses.detach()
    if isinstance(aggregator, GramianWeightedAggregator):
        try:
            update, weights, gramian = aggregator.aggregate(matrix, losses=losses)
        except Exception:
            if all_finite([matrix]):
                raise
            return Aggregated(_nan_update(matrix), None, None, False)
        if gramian is not None:
            finite = weights is not None and bool(torch.isfinite(weights).all())
            return Aggregated(update, weights, gramian, finite)
        # A subclass with its own forward: the Gramian was not seen, check the matrix itself.
        if not all_finite([matrix]):
            return Aggregated(_nan_update(matrix), None, None, False)
    elif not all_finite([matrix]):
        return Aggregated(_nan_update(matrix), None, None, False)
    else:
        update, weights, gramian = aggregator.aggregate(matrix, losses=losses)
    if record_gramian and gramian is None:
        # For diagnostics (cosines and signs): rescaled where J Jᵀ would overflow.
        gramian = rescaled_gramian(matrix.detach(), "any")
    return Aggregated(update, weights, gramian, False)


def _nan_update(matrix: Tensor) -> Tensor:
    return torch.full_like(matrix[0], math.nan)


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether no tensor holds inf or NaN: one summing pass (a sum of values is non-finite iff
    some value is, up to overflow of the sum itself, which would overflow the update anyway).

    On the CPU each sum is read at once, so the first non-finite tensor ends the pass and no
    stacking op is dispatched (a few microseconds per tensor, next to a step of milliseconds);
    on other devices the sums are stacked, so that one synchronisation per device reads them.
    """
    by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
    for tensor in tensors:
        if tensor.numel() == 0:
            continue
        if tensor.is_sparse:
            tensor = tensor.coalesce().values()
        low = tensor.dtype in (torch.float16, torch.bfloat16)
        total = tensor.sum(dtype=torch.float32) if low else tensor.sum()
        if total.device.type == "cpu":
            if not cmath.isfinite(total.item()):  # cmath: complex sums too
                return False
        else:
            by_device[total.device].append(total)
    for sums in by_device.values():
        dtype = torch.float64 if any(s.dtype == torch.float64 for s in sums) else torch.float32
        if not bool(torch.stack([s.to(dtype) for s in sums]).isfinite().all()):
            return False
    return True
