"""The aggregators the cross-cutting aggregation tests run on, built for a given number of rows.

Some aggregators need parameters that depend on m (``Constant``'s weights, ``NashMTL``'s
``n_tasks``, ``Krum``/``TrimmedMean`` need enough rows), so each case is a factory ``m -> A``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from jdoptim import aggregation
from jdoptim.aggregation import Aggregator


@dataclass(frozen=True)
class AggregatorCase:
    """A named way of building an aggregator for matrices with m rows (``m >= min_m``)."""

    name: str
    make: Callable[[int], Aggregator]
    min_m: int = 1
    #: Solves a convex program with cvxpy at every call: run it on few examples.
    slow: bool = False

    def __call__(self, m: int) -> Aggregator:
        return self.make(m)

    def __repr__(self) -> str:
        return self.name


def _constant_weights(m: int) -> torch.Tensor:
    """Deterministic, strictly positive, unequal weights: 1, 2, …, m over m."""
    return torch.arange(1, m + 1, dtype=torch.float32) / m


def _krum(m: int) -> Aggregator:
    # Krum needs m ≥ n_byzantine + 3 and m ≥ n_selected.
    n_byzantine = (m - 3) // 2
    return aggregation.Krum(n_byzantine=n_byzantine, n_selected=max(1, (m - n_byzantine) // 2))


def _case(name: str, make: Callable[[int], Aggregator], **kwargs: object) -> AggregatorCase:
    return AggregatorCase(name, make, **kwargs)  # type: ignore[arg-type]


# The default solver is "torch"; the quadprog solver stays available and is tested too.
UPGRAD = _case("UPGrad", lambda m: aggregation.UPGrad())
UPGRAD_QUADPROG = _case("UPGrad(solver=quadprog)", lambda m: aggregation.UPGrad(solver="quadprog"))
DUALPROJ = _case("DualProj", lambda m: aggregation.DualProj())
DUALPROJ_QUADPROG = _case(
    "DualProj(solver=quadprog)", lambda m: aggregation.DualProj(solver="quadprog")
)
MGDA = _case("MGDA", lambda m: aggregation.MGDA())
IMTLG = _case("IMTLG", lambda m: aggregation.IMTLG())
ALIGNED_MTL = _case("AlignedMTL", lambda m: aggregation.AlignedMTL())
ALIGNED_MTL_MEDIAN = _case(
    "AlignedMTL(median)", lambda m: aggregation.AlignedMTL(scale_mode="median")
)
ALIGNED_MTL_RMSE = _case("AlignedMTL(rmse)", lambda m: aggregation.AlignedMTL(scale_mode="rmse"))
CAGRAD = _case("CAGrad", lambda m: aggregation.CAGrad(c=0.5), slow=True)
NASH_MTL = _case("NashMTL", lambda m: aggregation.NashMTL(n_tasks=m), slow=True)
PCGRAD = _case("PCGrad", lambda m: aggregation.PCGrad())
KRUM = _case("Krum", _krum, min_m=3)
MEAN = _case("Mean", lambda m: aggregation.Mean())
SUM = _case("Sum", lambda m: aggregation.Sum())
CONSTANT = _case("Constant", lambda m: aggregation.Constant(_constant_weights(m)))
RANDOM = _case("Random", lambda m: aggregation.Random())
CONFIG = _case("ConFIG", lambda m: aggregation.ConFIG())
GRADDROP = _case("GradDrop", lambda m: aggregation.GradDrop())
TRIMMED_MEAN = _case("TrimmedMean", lambda m: aggregation.TrimmedMean(trim_number=(m - 1) // 4))
# The methods with state or a solver of their own, callable on the Jacobian alone (DBMTL also
# needs the loss values: its shared tests are in test_methods_common.py).
FAIRGRAD = _case("FairGrad", lambda m: aggregation.FairGrad(alpha=1.0))
GRADVAC = _case("GradVac", lambda m: aggregation.GradVac())
EXCESS_MTL = _case("ExcessMTL", lambda m: aggregation.ExcessMTL())
PCD = _case("PCD", lambda m: aggregation.PCD())
MOCO = _case("MoCo", lambda m: aggregation.MoCo())

ALL_CASES = [
    UPGRAD,
    UPGRAD_QUADPROG,
    DUALPROJ,
    DUALPROJ_QUADPROG,
    MGDA,
    IMTLG,
    ALIGNED_MTL,
    ALIGNED_MTL_MEDIAN,
    ALIGNED_MTL_RMSE,
    CAGRAD,
    NASH_MTL,
    PCGRAD,
    KRUM,
    MEAN,
    SUM,
    CONSTANT,
    RANDOM,
    CONFIG,
    GRADDROP,
    TRIMMED_MEAN,
    FAIRGRAD,
    GRADVAC,
    EXCESS_MTL,
    PCD,
    MOCO,
]

#: The aggregators whose output cannot be backpropagated through (solvers outside autograd).
NON_DIFFERENTIABLE = {
    "CAGrad",
    "ConFIG",
    "DualProj",
    "GradDrop",
    "IMTLG",
    "NashMTL",
    "PCGrad",
    "UPGrad",
    "FairGrad",
    "GradVac",
    "ExcessMTL",
    "PCD",
    "MoCo",
}

#: The aggregators of the form Jᵀ W(J Jᵀ): those with a Gramian weighting.
GRAMIAN_WEIGHTED = {
    "UPGrad",
    "DualProj",
    "MGDA",
    "CAGrad",
    "AlignedMTL",
    "IMTLG",
    "PCGrad",
    "Krum",
    "Mean",
    "Sum",
    "Constant",
    "Random",
    "FairGrad",
    "GradVac",
    "PCD",
}

#: The aggregators whose weighting reads the Jacobian itself (a WeightedAggregator).
JACOBIAN_WEIGHTED = {"ExcessMTL"}


def class_name(case: AggregatorCase) -> str:
    """The aggregator's class name (case names may add the parameters of a variant)."""
    return case.name.split("(")[0]


def params(cases: list[AggregatorCase]) -> list[object]:
    """``pytest.param`` for each case, with the case's name as its id."""
    return [pytest.param(case, id=case.name) for case in cases]
