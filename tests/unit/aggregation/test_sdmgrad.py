"""SDMGradWeighting: one inner step by hand, weights on the simplex, the preference vector,
edge cases and arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.aggregation import SDMGradWeighting


def test_one_inner_step_by_hand() -> None:
    # c = (2 + 1)/2, Â = diag(4, 1)/2.25; g = Â(w + 0.3/2) = (1.1556, 0.2889);
    # w − 0.1 g = (0.38444, 0.47111), shifted by +0.07222; output (w + 0.15)/1.3.
    cross = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    weighting = SDMGradWeighting(lr=0.1, n_iter=1)
    weights = weighting(cross)
    stored = torch.tensor([0.5 - 0.1 * (4 - 1) * 0.65 / 2.25 / 2] * 2, dtype=torch.float64)
    stored[1] = 1 - stored[0]
    torch.testing.assert_close(weighting.weights, stored)
    torch.testing.assert_close(weights, (stored + 0.15) / 1.3)


def test_momentum_in_the_inner_loop() -> None:
    cross = torch.tensor([[4.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    weighting = SDMGradWeighting(lr=0.05, momentum=0.5, n_iter=2, lambda_=0.0)
    normalised = cross / (1.5**2 + 1e-8)
    w = torch.full((2,), 0.5, dtype=torch.float64)
    first = normalised @ w
    w1 = w - 0.05 * first
    w1 = w1 + (1 - w1.sum()) / 2  # inside the simplex: a shift
    velocity = 0.5 * first + normalised @ w1
    w2 = w1 - 0.05 * velocity
    w2 = w2 + (1 - w2.sum()) / 2
    torch.testing.assert_close(weighting(cross), w2)


@given(
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([1e-6, 1.0, 1e10]),
)
def test_weights_stay_on_the_simplex(m: int, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    weighting = SDMGradWeighting()
    for _ in range(3):
        matrix = torch.randn(m, 5, generator=generator, dtype=torch.float64)
        second = matrix + 0.5 * torch.randn(m, 5, generator=generator, dtype=torch.float64)
        weights = weighting(scale * matrix @ second.T)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
        assert (weighting.weights >= 0).all()


def test_preference_vector_is_mixed_into_the_output() -> None:
    # With A = I the inner loop minimises ‖w + w̃‖² over the simplex: w = e₂ for w̃ = e₁, and
    # the output (w + w̃)/2 balances the two objectives.
    cross = torch.eye(2, dtype=torch.float64)
    preference = torch.tensor([1.0, 0.0])
    weighting = SDMGradWeighting(lambda_=1.0, pref_vector=preference)
    weights = weighting(cross)
    torch.testing.assert_close(weighting.weights, torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_preference_vector_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"`pref_vector` must have 3 entries.*shape \[2\]"):
        SDMGradWeighting(pref_vector=torch.ones(2))(torch.eye(3))


def test_single_objective_and_zero_matrix() -> None:
    assert torch.equal(SDMGradWeighting()(torch.tensor([[5.0]])), torch.ones(1))
    weighting = SDMGradWeighting()
    for _ in range(3):
        torch.testing.assert_close(weighting(torch.zeros(4, 4)), torch.full((4,), 0.25))


def test_repr() -> None:
    assert repr(SDMGradWeighting()) == (
        "SDMGradWeighting(lr=10.0, momentum=0.5, n_iter=20, lambda_=0.3, pref_vector=None)"
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"lr": 0.0}, ValueError, "lr"),
        ({"momentum": 1.0}, ValueError, "momentum"),
        ({"momentum": -0.5}, ValueError, "momentum"),
        ({"n_iter": 0}, ValueError, "n_iter"),
        ({"n_iter": 2.0}, TypeError, "n_iter"),
        ({"lambda_": -0.3}, ValueError, "lambda_"),
        ({"pref_vector": [0.5, 0.5]}, TypeError, "pref_vector"),
        ({"pref_vector": torch.ones(2, 2)}, ValueError, "pref_vector"),
        ({"pref_vector": torch.tensor([1.0, float("nan")])}, ValueError, "pref_vector"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        SDMGradWeighting(**kwargs)  # type: ignore[arg-type]
