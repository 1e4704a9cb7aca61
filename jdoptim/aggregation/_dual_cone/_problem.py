"""``k`` dual-cone problems on one Gramian, in the form every solver takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Problem:
    """``k`` dual-cone problems on one Gramian, ready for a solver.

    Attributes:
        gramian: ``[m, m]`` float64, symmetric, ``S⁻¹ G S⁻¹`` with a diagonal in ``[1/2, 2]``
            (zero for a zero row).
        lower_bounds: ``[k, m]`` float64, on the Gramian's device: ``u S``, row by row.
        row_scales: ``[m]`` powers of two ``s``: the caller's solution is ``y / s``.
        input_dtype: the dtype of the Gramian the caller passed; its precision decides which
            eigenvalues of ``G`` are rounding noise (see :mod:`._jitter`).
        first_jitter: the first rung of the jitter ladder, the problem actually solved: ``0``
            unless ``G`` is numerically singular (see :mod:`._jitter`).
    """

    gramian: Tensor
    lower_bounds: Tensor
    row_scales: Tensor
    input_dtype: torch.dtype
    first_jitter: float

    def unscale(self, solution: Tensor) -> Tensor:
        """The solutions of the caller's problem from those of this rescaled one."""
        return solution / self.row_scales
