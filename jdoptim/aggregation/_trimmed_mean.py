"""TrimmedMean: coordinate-wise mean without the extreme values."""

from __future__ import annotations

from torch import Tensor

from ._bases import Aggregator


class TrimmedMean(Aggregator):
    r"""Coordinate-wise trimmed mean of the rows.

    For each column j, the ``trim_number`` = t smallest and t largest values of
    :math:`J_{1j}, \dots, J_{mj}` are dropped and the :math:`m - 2t` others are averaged.
    Requires :math:`m \ge 2t + 1`. A non-finite value is never trimmed away silently: its
    column of the output is NaN (so that, e.g., ``GradScaler`` skips the step). From
    "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates" (Yin et al.,
    ICML 2018).

    Args:
        trim_number: the number t of values dropped at each end of every column.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import TrimmedMean
        >>> matrix = torch.tensor([[1.0, 9.0], [2.0, -7.0], [3.0, 1.0], [100.0, 2.0]])
        >>> TrimmedMean(trim_number=1)(matrix)
        tensor([2.5000, 1.5000])
    """

    def __init__(self, trim_number: int) -> None:
        super().__init__()
        if not isinstance(trim_number, int) or isinstance(trim_number, bool):
            raise TypeError(f"`trim_number` must be an int, but got {type(trim_number).__name__}.")
        if trim_number < 0:
            raise ValueError(f"`trim_number` must be an int >= 0, but got {trim_number!r}.")
        self.trim_number = trim_number

    def forward(self, matrix: Tensor, /) -> Tensor:
        m = matrix.shape[0]
        t = self.trim_number
        if m < 2 * t + 1:
            raise ValueError(
                f"`trim_number` = {t} requires at least 2 * trim_number + 1 = {2 * t + 1} rows, "
                f"but got a matrix of shape {list(matrix.shape)}."
            )
        sorted_columns = matrix.sort(dim=0).values
        # NaN and +inf sort last, -inf first: adding 0·(first + last row), elementwise, keeps
        # the output unchanged unless the column holds a non-finite value, which must not be
        # trimmed away silently (GradScaler relies on non-finite outputs to skip a step).
        non_finite_guard = 0.0 * sorted_columns[0] + 0.0 * sorted_columns[-1]
        return sorted_columns[t : m - t].mean(dim=0) + non_finite_guard

    def __repr__(self) -> str:
        return f"{type(self).__name__}(trim_number={self.trim_number})"
