"""Every method of the library, by name, as a factory of fresh instances.

Each run gets fresh instances (stateful methods keep per-run state). Hyperparameters are the
papers' defaults where the class has none: CAGrad's ``c = 0.4`` (its paper's toy setting) and
FairGrad's ``alpha = 1`` (the proportional-fairness member of its family). Krum needs at least
three losses and is only run on problems that have them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from jdoptim import aggregation as agg
from jdoptim import scalarization as sc

AggregatorFactory = Callable[[int], agg.Aggregator]

#: Families used to colour the tables and the guide: Jacobian descent with an aggregator whose
#: update conflicts with no task ("non-conflicting"), aggregators that do not depend on the
#: scale of each task's gradient ("scale-invariant"), and the other gradient manipulations.
FAMILIES = {
    "UPGrad": "non-conflicting",
    "UPGrad(reg_eps=0)": "non-conflicting",
    "DualProj": "non-conflicting",
    "MGDA": "non-conflicting",
    "CAGrad": "conflict-averse",
    "NashMTL": "non-conflicting",
    "FairGrad": "non-conflicting",
    "IMTLG": "scale-invariant",
    "AlignedMTL": "scale-invariant",
    "ConFIG": "scale-invariant",
    "PCD": "scale-invariant",
    "GradNorm": "scale-invariant",
    "PCGrad": "gradient surgery",
    "GradVac": "gradient surgery",
    "GradDrop": "gradient surgery",
    "MoCo": "stochastic MOO",
    "MoDo": "stochastic MOO",
    "SDMGrad": "stochastic MOO",
    "CRMOGM": "stochastic MOO",
    "ExcessMTL": "loss-aware weighting",
    "DBMTL": "loss-aware weighting",
    "Krum": "robust",
    "TrimmedMean": "robust",
    "Mean": "baseline",
    "Sum": "baseline",
    "Constant": "baseline",
    "Random": "baseline",
}


def _increasing(m: int) -> torch.Tensor:
    """Constant weights 1, ..., 2 (evenly spaced), normalised to sum to 1."""
    weights = torch.linspace(1.0, 2.0, m)
    return weights / weights.sum()


def aggregators(m: int) -> dict[str, AggregatorFactory]:
    """The aggregators that accept ``m`` losses, each with the hyperparameters used here."""
    factories: dict[str, AggregatorFactory] = {
        "UPGrad": lambda m: agg.UPGrad(),
        "UPGrad(reg_eps=0)": lambda m: agg.UPGrad(reg_eps=0.0),
        "DualProj": lambda m: agg.DualProj(),
        "MGDA": lambda m: agg.MGDA(),
        "CAGrad": lambda m: agg.CAGrad(c=0.4),
        "NashMTL": lambda m: agg.NashMTL(n_tasks=m),
        "FairGrad": lambda m: agg.FairGrad(alpha=1.0),
        "IMTLG": lambda m: agg.IMTLG(),
        "AlignedMTL": lambda m: agg.AlignedMTL(),
        "ConFIG": lambda m: agg.ConFIG(),
        "PCD": lambda m: agg.PCD(),
        "GradNorm": lambda m: agg.GramianWeightedAggregator(agg.GradNormWeighting()),
        "PCGrad": lambda m: agg.PCGrad(),
        "GradVac": lambda m: agg.GradVac(),
        "GradDrop": lambda m: agg.GradDrop(),
        "MoCo": lambda m: agg.MoCo(),
        "MoDo": lambda m: agg.GramianWeightedAggregator(agg.MoDoWeighting()),
        "SDMGrad": lambda m: agg.GramianWeightedAggregator(agg.SDMGradWeighting()),
        "CRMOGM": lambda m: agg.GramianWeightedAggregator(
            agg.CRMOGMWeighting(agg.UPGradWeighting())
        ),
        "ExcessMTL": lambda m: agg.ExcessMTL(),
        "DBMTL": lambda m: agg.DBMTL(),
        "TrimmedMean": lambda m: agg.TrimmedMean(trim_number=(m - 1) // 2),
        "Mean": lambda m: agg.Mean(),
        "Sum": lambda m: agg.Sum(),
        "Constant": lambda m: agg.Constant(_increasing(m)),
        "Random": lambda m: agg.Random(),
    }
    if m >= 3:
        factories["Krum"] = lambda m: agg.Krum(n_byzantine=0)
    return factories


#: Aggregators that solve a convex program with cvxpy at every call (~10× the cost of the
#: others on a two-row Jacobian): the quick mode runs them for fewer steps.
SLOW = frozenset({"CAGrad", "NashMTL", "FairGrad", "SDMGrad"})


ScalarizerFactory = Callable[[int], sc.Scalarizer]


def scalarizers(m: int) -> dict[str, ScalarizerFactory]:
    """The scalarizers, each with the hyperparameters used here (equal preferences where a
    method takes a preference vector)."""

    def equal(m: int) -> torch.Tensor:
        return torch.full((m,), 1.0 / m)

    return {
        "s:Mean": lambda m: sc.Mean(),
        "s:Sum": lambda m: sc.Sum(),
        "s:Constant": lambda m: sc.Constant(_increasing(m)),
        "s:Random": lambda m: sc.Random(),
        "s:GeometricMean": lambda m: sc.GeometricMean(),
        "s:STCH": lambda m: sc.STCH(mu=1.0, weights=equal(m)),
        "s:COSMOS": lambda m: sc.COSMOS(lambda_=1.0, weights=equal(m)),
        "s:PBI": lambda m: sc.PBI(theta=5.0, weights=equal(m)),
        "s:UW": lambda m: sc.UW(shape=m),
        "s:IMTLL": lambda m: sc.IMTLL(shape=m),
        "s:DWA": lambda m: sc.DWA(),
        "s:FAMO": lambda m: sc.FAMO(shape=m),
    }


FAMILIES.update(
    {
        "s:Mean": "baseline",
        "s:Sum": "baseline",
        "s:Constant": "baseline",
        "s:Random": "loss weighting",
        "s:GeometricMean": "loss weighting (scale-invariant)",
        "s:STCH": "loss weighting",
        "s:COSMOS": "loss weighting",
        "s:PBI": "loss weighting",
        "s:UW": "loss weighting",
        "s:IMTLL": "loss weighting (scale-invariant)",
        "s:DWA": "loss weighting",
        "s:FAMO": "loss weighting (scale-invariant)",
    }
)
