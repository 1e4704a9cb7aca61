"""MoCo: the tracking and weight steps by hand, weights on the simplex, edge cases, arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.aggregation import MoCo
from jdoptim.aggregation._simplex import project_onto_simplex


def test_first_call_by_hand() -> None:
    # Y = 0.5 J = diag(1.5, 0.5); λ − 0.1·YYᵀλ = (0.3875, 0.4875), shifted by +0.0625.
    matrix = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    aggregator = MoCo()
    output = aggregator(matrix)
    torch.testing.assert_close(aggregator.weights, torch.tensor([0.45, 0.55], dtype=torch.float64))
    torch.testing.assert_close(output, torch.tensor([0.675, 0.275], dtype=torch.float64))


def test_three_calls_follow_the_recursion() -> None:
    generator = torch.Generator().manual_seed(0)
    matrices = [torch.randn(3, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    aggregator = MoCo(beta=0.8, beta_sigma=0.5, gamma=0.3, gamma_sigma=1.0, rho=0.2)
    tracked = torch.zeros(3, 4, dtype=torch.float64)
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    for step, matrix in enumerate(matrices, start=1):
        tracked = tracked - 0.8 / step**0.5 * (tracked - matrix)
        gamma = 0.3 / step
        weights = project_onto_simplex(
            weights - gamma * (tracked @ tracked.T @ weights + 0.2 * weights)
        )
        torch.testing.assert_close(aggregator(matrix), weights @ tracked)
    assert int(aggregator.step) == 3


@given(
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([1e-6, 1.0, 1e8]),
)
def test_weights_stay_on_the_simplex(m: int, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    aggregator = MoCo(gamma=1.0)
    for _ in range(4):
        aggregator(scale * torch.randn(m, 5, generator=generator, dtype=torch.float64))
        assert (aggregator.weights >= 0).all()
        torch.testing.assert_close(aggregator.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_single_row_gives_the_tracked_row() -> None:
    aggregator = MoCo(beta=1.0)
    row = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    torch.testing.assert_close(aggregator(row), row[0])


def test_zero_matrix() -> None:
    aggregator = MoCo()
    for _ in range(3):
        assert torch.equal(aggregator(torch.zeros(3, 2)), torch.zeros(2))


def test_repr() -> None:
    assert repr(MoCo()) == "MoCo(beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0)"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"beta": 0.0}, ValueError, "beta"),
        ({"beta": 1.5}, ValueError, "beta"),
        ({"beta_sigma": -0.5}, ValueError, "beta_sigma"),
        ({"gamma": 0.0}, ValueError, "gamma"),
        ({"gamma_sigma": -1.0}, ValueError, "gamma_sigma"),
        ({"rho": -0.1}, ValueError, "rho"),
        ({"rho": None}, TypeError, "rho"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        MoCo(**kwargs)  # type: ignore[arg-type]
