"""MoDoWeighting: the projected step by hand, weights on the simplex, edge cases, arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.aggregation import MoDoWeighting


def test_two_steps_by_hand() -> None:
    weighting = MoDoWeighting(gamma=0.1, rho=0.1)
    cross = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # λ − γ(Aλ + ρλ) = (0.5, 0.5) − 0.1·(1.05, 0.55) = (0.395, 0.445), shifted by +0.08.
    torch.testing.assert_close(weighting(cross), torch.tensor([0.475, 0.525], dtype=torch.float64))
    # (0.475, 0.525) − 0.1·(0.9975, 0.5775) = (0.37525, 0.46725), shifted by +0.07875.
    torch.testing.assert_close(weighting(cross), torch.tensor([0.454, 0.546], dtype=torch.float64))
    torch.testing.assert_close(weighting.weights, torch.tensor([0.454, 0.546], dtype=torch.float64))


def test_non_symmetric_cross_matrix() -> None:
    cross = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    # (0.5, 0.5) − 0.1·((1.5, 0.5) + 0.05) = (0.345, 0.445), shifted by +0.105.
    expected = torch.tensor([0.45, 0.55], dtype=torch.float64)
    torch.testing.assert_close(MoDoWeighting()(cross), expected)


@given(
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([1e-8, 1.0, 1e6, 1e15]),
)
def test_weights_stay_on_the_simplex(m: int, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    weighting = MoDoWeighting(gamma=0.5, rho=0.0)
    for _ in range(4):
        cross = scale * torch.randn(m, m, generator=generator, dtype=torch.float64)
        weights = weighting(cross)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_single_objective_and_zero_matrix() -> None:
    assert torch.equal(MoDoWeighting()(torch.tensor([[5.0]])), torch.ones(1))
    weighting = MoDoWeighting()
    for _ in range(3):
        assert torch.equal(weighting(torch.zeros(4, 4)), torch.full((4,), 0.25))


def test_state_is_float64_whatever_the_input() -> None:
    weighting = MoDoWeighting()
    weights = weighting(torch.eye(3, dtype=torch.float16))
    assert weights.dtype == torch.float16
    assert weighting.weights.dtype == torch.float64


def test_repr_and_settable_arguments() -> None:
    weighting = MoDoWeighting(gamma=0.5, rho=0.0)
    assert repr(weighting) == "MoDoWeighting(gamma=0.5, rho=0.0)"
    weighting.gamma = 0.2
    assert weighting.gamma == 0.2
    with pytest.raises(ValueError, match="`gamma`"):
        weighting.gamma = 0.0
    assert weighting.gamma == 0.2


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"gamma": 0.0}, ValueError, "gamma"),
        ({"gamma": -1.0}, ValueError, "gamma"),
        ({"gamma": float("inf")}, ValueError, "gamma"),
        ({"gamma": None}, TypeError, "gamma"),
        ({"rho": -0.1}, ValueError, "rho"),
        ({"rho": float("nan")}, ValueError, "rho"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        MoDoWeighting(**kwargs)  # type: ignore[arg-type]
