"""What only DualProj does; what it shares with UPGrad is in ``test_dual_cone_aggregators.py``."""

from __future__ import annotations

import torch
from _matrices import REFERENCE_JACOBIAN

from jdoptim.aggregation import DualProj, DualProjWeighting


def test_output_conflicts_with_the_reference_rows_only_up_to_the_regularisation() -> None:
    products = REFERENCE_JACOBIAN @ DualProj()(REFERENCE_JACOBIAN)

    # -reg_eps · tr(G) · max(w) = -1e-4 · 56 · 0.6109
    assert (products >= -3.5e-3).all()
    assert (DualProj(reg_eps=0.0)(REFERENCE_JACOBIAN) @ REFERENCE_JACOBIAN.T >= -1e-5).all()


def test_projection_of_the_mean_by_hand() -> None:
    # G = [[18, -22], [-22, 38]], p = (1/2, 1/2): Gp = (-2, 8), so only w_1 moves, until
    # (Gw)_1 = 0: w = (11/18, 1/2), up to the regularisation.
    weights = DualProjWeighting(reg_eps=0.0)(REFERENCE_JACOBIAN @ REFERENCE_JACOBIAN.T)

    torch.testing.assert_close(weights, torch.tensor([11 / 18, 0.5]))
