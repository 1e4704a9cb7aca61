"""The projection onto the probability simplex, at any scale."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.aggregation._simplex import project_onto_simplex


def test_values_by_hand() -> None:
    point = torch.tensor([0.5, 0.2, -1.0], dtype=torch.float64)
    # θ = (0.5 + 0.2 − 1)/2 = −0.15: (0.65, 0.35, 0).
    expected = torch.tensor([0.65, 0.35, 0.0], dtype=torch.float64)
    torch.testing.assert_close(project_onto_simplex(point), expected)


def test_points_of_the_simplex_are_fixed() -> None:
    point = torch.tensor([0.25, 0.0, 0.75], dtype=torch.float64)
    torch.testing.assert_close(project_onto_simplex(point), point)


@given(
    st.integers(min_value=1, max_value=20),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([1e-10, 1.0, 1e8, 1e15, 1e20]),
)
def test_projection_is_on_the_simplex_and_optimal(m: int, seed: int, scale: float) -> None:
    point = scale * torch.randn(
        m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    projection = project_onto_simplex(point)
    assert (projection >= 0).all()
    torch.testing.assert_close(projection.sum(), torch.tensor(1.0, dtype=torch.float64))
    # Optimality: projection = max(point − θ, 0) for one θ, i.e. point − projection is constant
    # on the support and not larger off it.
    residual = point - projection
    support = projection > 0
    theta = residual[support].mean()
    torch.testing.assert_close(
        residual[support], theta.expand(int(support.sum())), rtol=1e-12, atol=1e-12 * scale
    )
    assert (point[~support] <= theta + 1e-12 * scale).all()


def test_huge_entries_do_not_cancel() -> None:
    # Without the shift by the maximum, 1e17 − (1e17 + … − 1)/k rounds to 0 everywhere.
    point = torch.tensor([1e17, -1e17, 3.0], dtype=torch.float64)
    assert torch.equal(
        project_onto_simplex(point), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    )
