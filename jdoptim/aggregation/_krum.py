"""Krum: Byzantine-robust selection of the rows closest to their neighbours."""

from __future__ import annotations

import torch
from torch import Tensor

from ._bases import GramianWeightedAggregator, Weighting


def _check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, but got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, but got {value!r}.")


class KrumWeighting(Weighting):
    r"""Weight :math:`1/k` on the ``k = n_selected`` rows of smallest Krum score, 0 elsewhere.

    With :math:`D_{ij} = G_{ii} + G_{jj} - 2 G_{ij} = \|g_i - g_j\|^2` and ``f = n_byzantine``,
    the score of row i is the sum of its :math:`m - f - 2` smallest :math:`D_{ij}`, :math:`j \ne i`.
    Ties are broken by the lowest index. A Gramian with a non-finite diagonal (a row of the
    Jacobian with a non-finite entry) gives NaN weights, so that the non-finite input shows in
    the output (e.g. for ``GradScaler`` to skip the step) instead of being silently left out.
    From "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent" (Blanchard
    et al., NeurIPS 2017).

    Args:
        n_byzantine: the number f of rows that may be arbitrary (Byzantine); requires
            :math:`m \ge f + 3`.
        n_selected: the number of rows selected and averaged (1 is the original Krum, more is
            Multi-Krum); requires :math:`m \ge` ``n_selected``.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import KrumWeighting
        >>> matrix = torch.tensor([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [30.0, -30.0]])
        >>> KrumWeighting(n_byzantine=1)(matrix @ matrix.T)
        tensor([1., 0., 0., 0.])
    """

    # The weights do not depend on the scale of the Gramian.
    gramian_rescaling = "any"

    def __init__(self, n_byzantine: int, n_selected: int = 1) -> None:
        super().__init__()
        _check_int("n_byzantine", n_byzantine, 0)
        _check_int("n_selected", n_selected, 1)
        self.n_byzantine = n_byzantine
        self.n_selected = n_selected

    def forward(self, gramian: Tensor, /) -> Tensor:
        m = gramian.shape[0]
        if m < self.n_byzantine + 3:
            raise ValueError(
                f"`n_byzantine` = {self.n_byzantine} requires at least n_byzantine + 3 = "
                f"{self.n_byzantine + 3} rows, but got m = {m} (a Gramian of shape "
                f"{list(gramian.shape)})."
            )
        if m < self.n_selected:
            raise ValueError(
                f"`n_selected` = {self.n_selected} requires at least as many rows, but got "
                f"m = {m} (a Gramian of shape {list(gramian.shape)})."
            )
        diagonal = gramian.diagonal()
        distances = (diagonal[:, None] + diagonal[None, :] - 2.0 * gramian).clamp(min=0.0)
        # A row is not its own neighbour: its distance to itself goes last.
        eye = torch.eye(m, dtype=torch.bool, device=gramian.device)
        distances = distances.masked_fill(eye, float("inf"))
        n_neighbours = m - self.n_byzantine - 2
        scores = distances.sort(dim=1).values[:, :n_neighbours].sum(dim=1)
        selected = scores.sort(stable=True).indices[: self.n_selected]
        weights = torch.zeros_like(diagonal)
        weights[selected] = 1.0 / self.n_selected
        # A non-finite row (its squared norm Gᵢᵢ is then non-finite) is not just left out: the
        # output must show it, e.g. for GradScaler to skip the step. No host synchronisation.
        all_finite = torch.isfinite(diagonal).all()
        return torch.where(all_finite, weights, torch.full_like(weights, float("nan")))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_byzantine={self.n_byzantine}, n_selected={self.n_selected})"
        )


class Krum(GramianWeightedAggregator):
    r"""Average of the ``n_selected`` rows with the smallest Krum scores: :math:`A(J) = J^\top w`.

    See :class:`KrumWeighting` for the scores. Robust to up to ``n_byzantine`` arbitrary rows
    (e.g. corrupted or adversarial gradients). From "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent" (Blanchard et al., NeurIPS 2017).

    Args:
        n_byzantine: the number of rows that may be arbitrary; requires m ≥ ``n_byzantine`` + 3.
        n_selected: the number of selected rows that are averaged; requires m ≥ ``n_selected``.

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import Krum
        >>> matrix = torch.tensor([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [30.0, -30.0]])
        >>> Krum(n_byzantine=1, n_selected=3)(matrix)
        tensor([1.3333, 1.3333])
    """

    gramian_weighting: KrumWeighting

    def __init__(self, n_byzantine: int, n_selected: int = 1) -> None:
        super().__init__(KrumWeighting(n_byzantine, n_selected))

    def __repr__(self) -> str:
        weighting = self.gramian_weighting
        return (
            f"{type(self).__name__}(n_byzantine={weighting.n_byzantine}, "
            f"n_selected={weighting.n_selected})"
        )
