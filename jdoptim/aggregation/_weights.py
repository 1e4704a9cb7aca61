"""Aggregation that also reports the weights it used, for diagnostics at no extra cost."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ._bases import Aggregator, GramianWeightedAggregator
from ._matrix_weighting import WeightedAggregator


def aggregate_with_weights(
    aggregator: Aggregator, matrix: Tensor, *, losses: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Returns ``aggregator(matrix)`` and the weights it used (None when it is not weighted).

    The aggregator is called as a module, so every hook a user registered on it or on its
    weighting fires; the weights are captured by a temporary forward hook on the weighting.
    ``losses`` is passed on when the aggregator reads the loss values (``requires_losses``).
    """
    kwargs = {"losses": losses} if aggregator.requires_losses else {}
    if not isinstance(aggregator, (GramianWeightedAggregator, WeightedAggregator)):
        return aggregator(matrix, **kwargs), None
    captured: list[Tensor] = []

    def capture(module: nn.Module, args: Any, output: Tensor) -> None:
        captured.append(output)

    handle = aggregator.weighting.register_forward_hook(capture)
    try:
        output = aggregator(matrix, **kwargs)
    finally:
        handle.remove()
    weights = captured[-1].detach() if captured else None
    return output, weights
