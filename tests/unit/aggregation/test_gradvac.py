"""GradVac: values by hand, the cosine targets reached after one call, the targets' moving
average, its random draws, edge cases and arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from jdoptim.aggregation import GradVac, GradVacWeighting


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    return a @ b / (a.norm() * b.norm())


def test_two_conflicting_rows_by_hand() -> None:
    # g₁ = (1, 0), g₂ = (−1, 1): φ = −1/√2 < 0, so g̃₁ = g₁ + ½g₂ and g̃₂ = g₂ + g₁ (both
    # orthogonal to the other gradient); targets become β·φ.
    matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    weighting = GradVacWeighting(beta=0.5)
    weights = weighting(matrix @ matrix.T)
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.5], dtype=torch.float64))
    phi = -(2**-0.5)
    expected_targets = torch.tensor([[0.0, 0.5 * phi], [0.5 * phi, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(weighting.targets, expected_targets)


@given(
    st.integers(min_value=0, max_value=2**31 - 1),
    st.floats(min_value=-0.9, max_value=0.9),
)
def test_one_call_raises_the_cosine_to_the_target(seed: int, target: float) -> None:
    matrix = torch.randn(2, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    weighting = GradVacWeighting(beta=1.0, eps=0.0)
    weighting.load_state_dict({"targets": torch.full((2, 2), target, dtype=torch.float64)})
    weights = weighting(matrix @ matrix.T)
    phi = float(_cosine(matrix[0], matrix[1]))
    # For m = 2, w = (1 + c₂₁, 1 + c₁₂) with g̃₁ = g₁ + c₁₂g₂ and g̃₂ = g₂ + c₂₁g₁.
    corrected_first = matrix[0] + (weights[1] - 1) * matrix[1]
    corrected_second = matrix[1] + (weights[0] - 1) * matrix[0]
    expected = max(phi, target)
    assert _cosine(corrected_first, matrix[1]).item() == pytest.approx(expected, abs=1e-9)
    assert _cosine(corrected_second, matrix[0]).item() == pytest.approx(expected, abs=1e-9)
    # β = 1: the new targets are the cosines measured before the correction.
    torch.testing.assert_close(weighting.targets[0, 1].item(), phi)
    torch.testing.assert_close(weighting.targets[1, 0].item(), phi)


def test_targets_are_a_moving_average_of_the_cosines() -> None:
    matrix = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    weighting = GradVacWeighting(beta=0.25)
    for _ in range(3):
        weights = weighting(matrix @ matrix.T)
    # φ = 1/√2 ≥ every target (they rise towards it), so nothing is ever corrected.
    torch.testing.assert_close(weights, torch.ones(2, dtype=torch.float64))
    expected = (1 - 0.75**3) * 2**-0.5
    torch.testing.assert_close(weighting.targets[0, 1].item(), expected)


def test_one_random_permutation_per_row_from_the_cpu_generator() -> None:
    matrix = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.manual_seed(3)
    GradVacWeighting()(matrix @ matrix.T)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    for _ in range(4):
        torch.randperm(3)
    assert torch.equal(after, torch.get_rng_state())


def test_same_seed_same_output() -> None:
    matrix = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(4)
    first = GradVac()(matrix)
    torch.manual_seed(4)
    assert torch.equal(GradVac()(matrix), first)


def test_single_row_and_zero_matrix() -> None:
    assert torch.equal(GradVacWeighting()(torch.tensor([[4.0]])), torch.ones(1))
    assert torch.equal(GradVacWeighting()(torch.zeros(3, 3)), torch.ones(3))
    assert torch.equal(GradVac()(torch.zeros(3, 2)), torch.zeros(2))


def test_repr() -> None:
    assert repr(GradVac(beta=0.1)) == "GradVac(beta=0.1, eps=1e-08)"
    assert repr(GradVacWeighting()) == "GradVacWeighting(beta=0.5, eps=1e-08)"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"beta": -0.1}, ValueError, "beta"),
        ({"beta": 1.1}, ValueError, "beta"),
        ({"beta": "0.5"}, TypeError, "beta"),
        ({"eps": -1.0}, ValueError, "eps"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        GradVac(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=f"`{name}`"):
        GradVacWeighting(**kwargs)  # type: ignore[arg-type]
