"""ExcessMTL: excess risks and steps by hand, the warm-up, weights on the simplex, arguments."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.aggregation import ExcessMTL, ExcessMTLWeighting, MatrixWeighting, WeightedAggregator


def test_baseline_then_one_step_by_hand() -> None:
    weighting = ExcessMTLWeighting()
    first = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    second = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    # First call: e = (1/√(1 + 1e-7), 4/√(4 + 1e-7)) is the baseline; weights stay uniform.
    assert torch.equal(weighting(first), torch.full((2,), 0.5, dtype=torch.float64))
    baseline = torch.tensor([1 / math.sqrt(1 + 1e-7), 4 / math.sqrt(4 + 1e-7)])
    # Second call: S = (2, 20), e = (1/√2, 16/√20) (+1e-7 inside the roots).
    excess = torch.tensor([1 / math.sqrt(2 + 1e-7), 16 / math.sqrt(20 + 1e-7)])
    relative = excess / (baseline + 1e-7)
    expected = torch.softmax(math.log(0.5) + relative, dim=0).double()
    torch.testing.assert_close(weighting(second), expected)
    assert int(weighting.step) == 2
    torch.testing.assert_close(weighting.squared_sum, torch.tensor([[2.0, 0], [0, 20]]).double())


def test_warm_up_averages_the_baseline() -> None:
    weighting = ExcessMTLWeighting(robust_step_size=2.0, n_warmup_steps=2)
    rows = [torch.tensor([[1.0], [2.0]], dtype=torch.float64)] * 3
    for matrix in rows[:2]:
        assert torch.equal(weighting(matrix), torch.full((2,), 0.5, dtype=torch.float64))
    # e after call 1: |gᵢ|; after call 2: gᵢ²/√(2gᵢ²) = |gᵢ|/√2. Baseline: their mean.
    expected_baseline = torch.tensor([1.0, 2.0], dtype=torch.float64) * (1 + 2**-0.5) / 2
    weighting(rows[2])
    torch.testing.assert_close(weighting.baseline, expected_baseline, rtol=1e-6, atol=0)


def test_zero_and_one_warm_up_steps_coincide() -> None:
    generator = torch.Generator().manual_seed(0)
    matrices = [torch.randn(3, 5, generator=generator, dtype=torch.float64) for _ in range(4)]
    zero, one = ExcessMTLWeighting(n_warmup_steps=0), ExcessMTLWeighting(n_warmup_steps=1)
    for matrix in matrices:
        assert torch.equal(zero(matrix), one(matrix))


@given(
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([1e-6, 1.0, 1e6]),
)
def test_weights_stay_on_the_simplex(m: int, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    weighting = ExcessMTLWeighting(robust_step_size=5.0)
    for _ in range(5):
        matrix = scale * torch.randn(m, 8, generator=generator, dtype=torch.float64)
        weights = weighting(matrix)
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_the_objective_falling_behind_gains_weight() -> None:
    weighting = ExcessMTLWeighting()
    weighting(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    weights = weighting(torch.tensor([[0.1, 0.0], [0.0, 3.0]]))
    assert weights[1] > weights[0]


def test_single_row_and_zero_matrix() -> None:
    weighting = ExcessMTLWeighting()
    for _ in range(3):
        assert torch.equal(weighting(torch.tensor([[1.0, -2.0]])), torch.ones(1))
    zero = ExcessMTLWeighting()
    for _ in range(3):
        assert torch.equal(zero(torch.zeros(3, 2)), torch.full((3,), 1 / 3))


def test_is_a_matrix_weighting_in_a_weighted_aggregator() -> None:
    aggregator = ExcessMTL()
    assert isinstance(aggregator, WeightedAggregator)
    assert isinstance(aggregator.weighting, MatrixWeighting)
    assert not aggregator.differentiable
    assert repr(aggregator) == "ExcessMTL(robust_step_size=1.0, n_warmup_steps=0)"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"robust_step_size": 0.0}, ValueError, "robust_step_size"),
        ({"robust_step_size": float("inf")}, ValueError, "robust_step_size"),
        ({"n_warmup_steps": -1}, ValueError, "n_warmup_steps"),
        ({"n_warmup_steps": 1.0}, TypeError, "n_warmup_steps"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        ExcessMTL(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=f"`{name}`"):
        ExcessMTLWeighting(**kwargs)  # type: ignore[arg-type]
