"""Aggregators turn a Jacobian ``[m, n]`` into one update ``[n]``; weightings give them weights.

Every aggregator and weighting is a :class:`torch.nn.Module`: forward hooks registered on them fire
on every use, and stateful ones save their state with ``state_dict``.
"""

from ._aligned_mtl import AlignedMTL, AlignedMTLWeighting
from ._bases import (
    Aggregation,
    Aggregator,
    Flattening,
    GeneralizedWeighting,
    GramianWeightedAggregator,
    Weighting,
)
from ._cagrad import CAGrad, CAGradWeighting
from ._config import ConFIG
from ._constant import Constant, ConstantWeighting
from ._dualproj import DualProj, DualProjWeighting
from ._graddrop import GradDrop
from ._imtlg import IMTLG, IMTLGWeighting
from ._krum import Krum, KrumWeighting
from ._mean import Mean, MeanWeighting
from ._mgda import MGDA, MGDAWeighting
from ._nash_mtl import NashMTL
from ._non_differentiable import NonDifferentiableError
from ._pcgrad import PCGrad, PCGradWeighting
from ._random import Random, RandomWeighting
from ._sum import Sum, SumWeighting
from ._trimmed_mean import TrimmedMean
from ._upgrad import UPGrad, UPGradWeighting

__all__ = [
    "IMTLG",
    "MGDA",
    "Aggregation",
    "Aggregator",
    "AlignedMTL",
    "AlignedMTLWeighting",
    "CAGrad",
    "CAGradWeighting",
    "ConFIG",
    "Constant",
    "ConstantWeighting",
    "DualProj",
    "DualProjWeighting",
    "Flattening",
    "GeneralizedWeighting",
    "GradDrop",
    "GramianWeightedAggregator",
    "IMTLGWeighting",
    "Krum",
    "KrumWeighting",
    "MGDAWeighting",
    "Mean",
    "MeanWeighting",
    "NashMTL",
    "NonDifferentiableError",
    "PCGrad",
    "PCGradWeighting",
    "Random",
    "RandomWeighting",
    "Sum",
    "SumWeighting",
    "TrimmedMean",
    "UPGrad",
    "UPGradWeighting",
    "Weighting",
]
