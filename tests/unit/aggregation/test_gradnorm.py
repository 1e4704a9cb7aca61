"""GradNormWeighting: the first steps by hand, the initial losses, the properties of the
weights, and the arguments."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.aggregation import GradNormWeighting

GRAMIAN = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
ONES = torch.ones(2, dtype=torch.float64)


def test_first_step_by_hand() -> None:
    weighting = GradNormWeighting(lr=0.5)
    # w = (1, 1), n = (2, 1), N = 1.5, equal rates: T = (1.5, 1.5), σ = (1, −1), Σσn = 1;
    # ∇θ = ((2 − 0.5), (−1 − 0.5))/1.5 = (1, −1), θ = (−0.5, 0.5).
    assert torch.equal(weighting(GRAMIAN, losses=ONES), ONES)
    torch.testing.assert_close(weighting.logits, torch.tensor([-0.5, 0.5], dtype=torch.float64))
    expected = 2 * torch.softmax(torch.tensor([-0.5, 0.5], dtype=torch.float64), dim=0)
    torch.testing.assert_close(weighting(GRAMIAN, losses=ONES), expected)


def test_training_rates_set_the_targets() -> None:
    weighting = GradNormWeighting(alpha=1.0, lr=0.1)
    identity = torch.eye(2, dtype=torch.float64)
    weighting(identity, losses=torch.tensor([2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(weighting.initial_losses, torch.tensor([2.0, 1.0]).double())
    # Equal norms; objective 2 trains slower (ρ = (0.5, 1)): its weight must grow.
    weighting(identity, losses=torch.tensor([1.0, 1.0], dtype=torch.float64))
    weights = weighting(identity, losses=torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert weights[1] > weights[0]
    torch.testing.assert_close(weighting.initial_losses, torch.tensor([2.0, 1.0]).double())


@given(
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([1e-6, 1.0, 1e6]),
)
def test_weights_are_positive_and_sum_to_m(m: int, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    weighting = GradNormWeighting(lr=0.3)
    for _ in range(5):
        matrix = scale * torch.randn(m, 4, generator=generator, dtype=torch.float64)
        losses = torch.rand(m, generator=generator, dtype=torch.float64)
        weights = weighting(matrix @ matrix.T, losses=losses)
        assert (weights > 0).all()
        torch.testing.assert_close(weights.sum(), torch.tensor(float(m), dtype=torch.float64))


def test_step_is_independent_of_the_gradient_scale() -> None:
    small, large = GradNormWeighting(), GradNormWeighting()
    losses = [torch.tensor([1.0, 2.0]).double(), torch.tensor([0.5, 1.9]).double()] * 2
    for loss in losses:
        torch.testing.assert_close(small(GRAMIAN * 1e-6, losses=loss), large(GRAMIAN, losses=loss))


def test_zero_gramian_makes_no_step_and_single_objective() -> None:
    weighting = GradNormWeighting()
    for _ in range(3):
        assert torch.equal(weighting(torch.zeros(2, 2), losses=torch.ones(2)), torch.ones(2))
    single = GradNormWeighting()
    for loss in (1.0, 0.5):
        assert torch.equal(
            single(torch.tensor([[4.0]]), losses=torch.tensor([loss])), torch.ones(1)
        )


def test_zero_initial_loss_counts_as_rate_one() -> None:
    weighting = GradNormWeighting(lr=0.5)
    weighting(GRAMIAN, losses=torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.isfinite(weighting(GRAMIAN, losses=ONES)).all()


def test_negative_losses_are_refused() -> None:
    with pytest.raises(ValueError, match="`losses` must be non-negative"):
        GradNormWeighting()(GRAMIAN, losses=torch.tensor([1.0, -1.0]))


def test_repr() -> None:
    assert repr(GradNormWeighting()) == "GradNormWeighting(alpha=1.5, lr=0.025)"
    assert math.isclose(GradNormWeighting().lr, 0.025)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"lr": "0.1"}, TypeError, "lr"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        GradNormWeighting(**kwargs)  # type: ignore[arg-type]
