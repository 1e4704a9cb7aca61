"""Scalarizers combine the vector of loss values into one scalar to back-propagate.

A scalarizer only sees the values of the losses, never their gradients, so a step costs one
ordinary backward pass. Every scalarizer is a :class:`torch.nn.Module` called positionally
(``scalarizer(losses)``): forward hooks registered on it fire on every call, and stateful ones
(:class:`UW`, :class:`IMTLL`, :class:`DWA`, :class:`FAMO`) save their state with ``state_dict``.
"""

from ._base import Scalarizer
from ._constant import Constant
from ._cosmos import COSMOS
from ._dwa import DWA
from ._famo import FAMO
from ._geometric_mean import GeometricMean
from ._imtll import IMTLL
from ._mean import Mean
from ._pbi import PBI
from ._random import Random
from ._stch import STCH
from ._sum import Sum
from ._uw import UW

__all__ = [
    "COSMOS",
    "DWA",
    "FAMO",
    "IMTLL",
    "PBI",
    "STCH",
    "UW",
    "Constant",
    "GeometricMean",
    "Mean",
    "Random",
    "Scalarizer",
    "Sum",
]
