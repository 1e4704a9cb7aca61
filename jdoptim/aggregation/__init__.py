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
from ._crmogm import CRMOGMWeighting
from ._dbmtl import DBMTL, DBMTLWeighting
from ._double_sampling import DoubleSampling
from ._dualproj import DualProj, DualProjWeighting
from ._excess_mtl import ExcessMTL, ExcessMTLWeighting
from ._fairgrad import FairGrad, FairGradWeighting
from ._graddrop import GradDrop
from ._gradnorm import GradNormWeighting
from ._gradvac import GradVac, GradVacWeighting
from ._imtlg import IMTLG, IMTLGWeighting
from ._krum import Krum, KrumWeighting
from ._matrix_weighting import MatrixWeighting, WeightedAggregator
from ._mean import Mean, MeanWeighting
from ._mgda import MGDA, MGDAWeighting
from ._moco import MoCo
from ._modo import MoDoWeighting
from ._nash_mtl import NashMTL
from ._non_differentiable import NonDifferentiableError
from ._pcd import PCD, PCDWeighting
from ._pcgrad import PCGrad, PCGradWeighting
from ._random import Random, RandomWeighting
from ._sdmgrad import SDMGradWeighting
from ._sum import Sum, SumWeighting
from ._trimmed_mean import TrimmedMean
from ._upgrad import UPGrad, UPGradWeighting

__all__ = [
    "DBMTL",
    "IMTLG",
    "MGDA",
    "PCD",
    "Aggregation",
    "Aggregator",
    "AlignedMTL",
    "AlignedMTLWeighting",
    "CAGrad",
    "CAGradWeighting",
    "CRMOGMWeighting",
    "ConFIG",
    "Constant",
    "ConstantWeighting",
    "DBMTLWeighting",
    "DoubleSampling",
    "DualProj",
    "DualProjWeighting",
    "ExcessMTL",
    "ExcessMTLWeighting",
    "FairGrad",
    "FairGradWeighting",
    "Flattening",
    "GeneralizedWeighting",
    "GradDrop",
    "GradNormWeighting",
    "GradVac",
    "GradVacWeighting",
    "GramianWeightedAggregator",
    "IMTLGWeighting",
    "Krum",
    "KrumWeighting",
    "MGDAWeighting",
    "MatrixWeighting",
    "Mean",
    "MeanWeighting",
    "MoCo",
    "MoDoWeighting",
    "NashMTL",
    "NonDifferentiableError",
    "PCDWeighting",
    "PCGrad",
    "PCGradWeighting",
    "Random",
    "RandomWeighting",
    "SDMGradWeighting",
    "Sum",
    "SumWeighting",
    "TrimmedMean",
    "UPGrad",
    "UPGradWeighting",
    "WeightedAggregator",
    "Weighting",
]
