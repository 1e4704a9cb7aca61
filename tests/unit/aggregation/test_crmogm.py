"""CRMOGMWeighting: the moving average by hand, its α = 0 and α = 1 limits, initial weights,
the statistic of the inner weighting, and its arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.aggregation import (
    CRMOGMWeighting,
    ExcessMTLWeighting,
    GramianWeightedAggregator,
    MGDAWeighting,
    MoDoWeighting,
    UPGradWeighting,
    WeightedAggregator,
)


def _gramians(count: int, m: int = 3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    matrices = [torch.randn(m, 4, generator=generator, dtype=torch.float64) for _ in range(count)]
    return [matrix @ matrix.T for matrix in matrices]


def test_moving_average_by_hand() -> None:
    weighting = CRMOGMWeighting(MGDAWeighting(), alpha=0.5)
    first = torch.diag(torch.tensor([1.0, 9.0], dtype=torch.float64))
    second = torch.diag(torch.tensor([9.0, 1.0], dtype=torch.float64))
    # MGDA: (0.9, 0.1), then (0.1, 0.9); the average starts at the first weights.
    torch.testing.assert_close(weighting(first), torch.tensor([0.9, 0.1], dtype=torch.float64))
    torch.testing.assert_close(weighting(second), torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(weighting(second), torch.tensor([0.3, 0.7], dtype=torch.float64))


@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_alpha_zero_returns_the_inner_weights(seed: int) -> None:
    weighting = CRMOGMWeighting(UPGradWeighting(), alpha=0.0)
    for gramian in _gramians(4, seed=seed):
        assert torch.equal(weighting(gramian), UPGradWeighting()(gramian))


@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_alpha_one_freezes_the_first_weights(seed: int) -> None:
    gramians = _gramians(4, seed=seed)
    weighting = CRMOGMWeighting(UPGradWeighting(), alpha=1.0)
    first = weighting(gramians[0])
    assert torch.equal(first, UPGradWeighting()(gramians[0]))
    for gramian in gramians[1:]:
        assert torch.equal(weighting(gramian), first)


def test_initial_weights_start_the_average() -> None:
    weighting = CRMOGMWeighting(MGDAWeighting(), alpha=0.5, initial_weights=torch.tensor([1.0, 0]))
    gramian = torch.diag(torch.tensor([9.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(weighting(gramian), torch.tensor([0.55, 0.45], dtype=torch.float64))


def test_initial_weights_of_the_wrong_length() -> None:
    weighting = CRMOGMWeighting(MGDAWeighting(), initial_weights=torch.ones(3))
    with pytest.raises(ValueError, match=r"`initial_weights` must have 2 entries.*shape \[3\]"):
        weighting(torch.eye(2))
    assert weighting.weights.shape == (0,)


def test_alpha_can_be_scheduled_between_calls() -> None:
    weighting = CRMOGMWeighting(MGDAWeighting(), alpha=0.0)
    weighting(torch.diag(torch.tensor([1.0, 9.0], dtype=torch.float64)))
    weighting.alpha = 1.0
    frozen = weighting(torch.diag(torch.tensor([9.0, 1.0], dtype=torch.float64)))
    torch.testing.assert_close(frozen, torch.tensor([0.9, 0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="`alpha`"):
        weighting.alpha = 1.5
    assert weighting.alpha == 1.0


def test_reads_the_statistic_of_its_inner_weighting() -> None:
    matrix = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    aggregator = WeightedAggregator(CRMOGMWeighting(ExcessMTLWeighting()))
    torch.testing.assert_close(aggregator(matrix), torch.tensor([0.5, 1.0]))
    cross = torch.tensor([[2.0, -1.0], [0.5, 1.0]])
    assert torch.isfinite(CRMOGMWeighting(MoDoWeighting())(cross)).all()
    with pytest.raises(ValueError, match="`gramian` must be a square matrix"):
        CRMOGMWeighting(MGDAWeighting())(torch.ones(2, 3))


def test_is_as_differentiable_as_its_inner_weighting() -> None:
    assert CRMOGMWeighting(MGDAWeighting()).differentiable
    assert not CRMOGMWeighting(UPGradWeighting()).differentiable


def test_state_is_detached() -> None:
    matrix = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    weighting = CRMOGMWeighting(MGDAWeighting())
    weighting(matrix @ matrix.T)
    assert not weighting.weights.requires_grad
    # A second call and backward work: no graph of the first call is kept.
    weighting(matrix @ matrix.T).sum().backward()


def test_repr_and_str() -> None:
    weighting = CRMOGMWeighting(MGDAWeighting(), alpha=0.5)
    assert repr(weighting) == (
        "CRMOGMWeighting(MGDAWeighting(epsilon=0.001, max_iters=100), alpha=0.5, "
        "initial_weights=None)"
    )
    assert str(weighting) == "CRMOGMWeighting(MGDAWeighting)"
    assert str(GramianWeightedAggregator(weighting)) == "GramianWeightedAggregator"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"alpha": 1.1}, ValueError, "alpha"),
        ({"initial_weights": [0.5, 0.5]}, TypeError, "initial_weights"),
        ({"initial_weights": torch.ones(2, 1)}, ValueError, "initial_weights"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        CRMOGMWeighting(MGDAWeighting(), **kwargs)  # type: ignore[arg-type]


def test_refuses_non_weightings() -> None:
    with pytest.raises(TypeError, match="`weighting`"):
        CRMOGMWeighting(MGDAWeighting)  # type: ignore[arg-type]
