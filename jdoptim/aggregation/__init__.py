"""Aggregators turn a Jacobian ``[m, n]`` into one update ``[n]``; weightings give them weights.

Every aggregator and weighting is a :class:`torch.nn.Module`: forward hooks registered on them fire
on every use, and stateful ones save their state with ``state_dict``.
"""

from ._aligned_mtl import AlignedMTL, AlignedMTLWeighting
from ._bases import (
    Aggregator,
    Flattening,
    GeneralizedWeighting,
    GramianWeightedAggregator,
    Weighting,
)
from ._dualproj import DualProj, DualProjWeighting
from ._imtlg import IMTLG, IMTLGWeighting
from ._mean import Mean, MeanWeighting
from ._mgda import MGDA, MGDAWeighting
from ._non_differentiable import NonDifferentiableError
from ._sum import Sum, SumWeighting
from ._upgrad import UPGrad, UPGradWeighting

__all__ = [
    "IMTLG",
    "MGDA",
    "Aggregator",
    "AlignedMTL",
    "AlignedMTLWeighting",
    "DualProj",
    "DualProjWeighting",
    "Flattening",
    "GeneralizedWeighting",
    "GramianWeightedAggregator",
    "IMTLGWeighting",
    "MGDAWeighting",
    "Mean",
    "MeanWeighting",
    "NonDifferentiableError",
    "Sum",
    "SumWeighting",
    "UPGrad",
    "UPGradWeighting",
    "Weighting",
]
