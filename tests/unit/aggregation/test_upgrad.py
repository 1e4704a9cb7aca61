"""What only UPGrad does; what it shares with DualProj is in ``test_dual_cone_aggregators.py``."""

from __future__ import annotations

from _matrices import REFERENCE_JACOBIAN

from jdoptim.aggregation import UPGrad


def test_output_does_not_conflict_with_the_reference_rows() -> None:
    assert (REFERENCE_JACOBIAN @ UPGrad()(REFERENCE_JACOBIAN) >= 0).all()
