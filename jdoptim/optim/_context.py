"""What a mode needs to know of the optimizer for one backward, gathered in one object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from torch import Tensor

from ..aggregation import Aggregator
from ._checks import check_disjoint
from ._distributed import Sync
from ._groups import Block


@dataclass(frozen=True)
class Context:
    """The optimizer as seen by a mode: no mode reads the optimizer itself.

    Attributes:
        groups: the parameters requiring grad of each parameter group.
        aggregators: the aggregator of each group (its ``"aggregator"`` key or the default).
        keyed: whether each group carries its own ``"aggregator"`` key.
        parallel_chunk_size: rows of the Jacobian per vectorised backward pass.
        sync: the distributed synchronisation (inactive for one process).
        record_gramians: whether groups that need no Gramian record one for diagnostics.
    """

    groups: list[list[Tensor]]
    aggregators: list[Aggregator]
    keyed: list[bool]
    parallel_chunk_size: int | None
    sync: Sync
    record_gramians: bool

    @property
    def needs_losses(self) -> bool:
        """Whether some group's aggregator reads the loss values."""
        return any(aggregator.requires_losses for aggregator in self.aggregators)

    @property
    def params(self) -> list[Tensor]:
        return [p for params in self.groups for p in params]

    def blocks(
        self, keep: set[int] | None, exclude: frozenset[int] | set[int] = frozenset()
    ) -> list[Block]:
        """Each group's parameters that are in ``keep`` (all when None) and not in ``exclude``."""
        return [
            Block(
                i,
                [p for p in params if (keep is None or id(p) in keep) and id(p) not in exclude],
                self.aggregators[i],
            )
            for i, params in enumerate(self.groups)
        ]


def build_context(
    param_groups: list[dict[str, Any]],
    default_aggregator: Aggregator | None,
    parallel_chunk_size: int | None,
    sync: Sync,
    record_gramians: bool,
) -> Context:
    """The context of one backward, from the optimizer's current parameter groups.

    ``default_aggregator`` is None in scalarizer mode, which reads no aggregator.
    """
    check_disjoint(param_groups, "optimizer")
    return Context(
        groups=[[p for p in group["params"] if p.requires_grad] for group in param_groups],
        aggregators=[
            cast(Aggregator, group.get("aggregator", default_aggregator)) for group in param_groups
        ],
        keyed=["aggregator" in group for group in param_groups],
        parallel_chunk_size=parallel_chunk_size,
        sync=sync,
        record_gramians=record_gramians,
    )
