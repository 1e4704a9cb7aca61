"""The Gramian that GramianWeightedAggregator gives its weighting: J Jᵀ, or that of J rescaled by
a power of two when the weighting declares that its weights do not depend on the scale."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from jdoptim.aggregation import (
    MGDA,
    GramianWeightedAggregator,
    Mean,
    MeanWeighting,
    Weighting,
)
from jdoptim.aggregation._rescaling import HIGH, LOW, rescaled_gramian


class RecordingMean(MeanWeighting):
    """Mean weights; records the Gramians it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def forward(self, gramian: Tensor, /) -> Tensor:
        self.seen.append(gramian)
        return super().forward(gramian)


class ScaleDependent(Weighting):
    """Weights 1 / ‖gᵢ‖: they depend on the scale, so the Gramian must be J Jᵀ as is."""

    def forward(self, gramian: Tensor, /) -> Tensor:
        return gramian.diagonal().rsqrt()


@pytest.mark.parametrize("scale", [1.0, 2.0**-38, 2.0**39, 1e-11, 1e11])
def test_moderate_jacobians_give_exactly_j_jt(scale: float) -> None:
    weighting = RecordingMean()
    matrix = (torch.rand(3, 5) - 0.5) * scale  # |entries| < scale / 2

    GramianWeightedAggregator(weighting)(matrix)

    assert torch.equal(weighting.seen[0], matrix @ matrix.T)


@pytest.mark.parametrize(("exponent", "expected"), [(70, HIGH), (41, HIGH), (-70, LOW + 1)])
def test_extreme_jacobians_are_rescaled_by_a_power_of_two(exponent: int, expected: int) -> None:
    matrix = torch.tensor([[0.75, -0.5], [0.25, 0.5]]) * 2.0**exponent

    gramian = rescaled_gramian(matrix, "any")

    # max|J| = 0.75·2^exponent is brought to 0.75·2^expected, exactly.
    scaled = torch.tensor([[0.75, -0.5], [0.25, 0.5]]) * 2.0**expected
    assert torch.equal(gramian, scaled @ scaled.T)


def test_down_only_rescaling_leaves_small_jacobians_alone() -> None:
    matrix = torch.tensor([[0.75, -0.5], [0.25, 0.5]]) * 2.0**-70

    assert torch.equal(rescaled_gramian(matrix, "down"), matrix @ matrix.T)


def test_scale_dependent_weighting_gets_j_jt_even_when_it_overflows() -> None:
    matrix = torch.full((2, 3), 1e20)

    output = GramianWeightedAggregator(ScaleDependent())(matrix)

    assert ScaleDependent.gramian_rescaling == "none"
    assert bool(torch.isnan(output).all() | torch.isinf(output).all() | (output == 0).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("aggregator", [Mean(), MGDA()], ids=["Mean", "MGDA"])
def test_non_finite_jacobian_still_gives_a_non_finite_output(
    aggregator: GramianWeightedAggregator, bad: float
) -> None:
    matrix = torch.randn(3, 4) * 1e30
    matrix[1, 2] = bad

    output = aggregator(matrix)

    assert not bool(torch.isfinite(output).all())


def test_all_zero_jacobian_gives_a_zero_gramian() -> None:
    assert torch.equal(rescaled_gramian(torch.zeros(2, 3), "any"), torch.zeros(2, 2))


def test_empty_jacobian() -> None:
    assert rescaled_gramian(torch.zeros(0, 3), "any").shape == (0, 0)
    assert rescaled_gramian(torch.zeros(2, 0), "any").shape == (2, 2)


def test_gradients_flow_through_the_rescaled_gramian() -> None:
    matrix = (torch.randn(3, 4, dtype=torch.float64) * 2.0**80).requires_grad_()

    MGDA()(matrix).sum().backward()

    assert matrix.grad is not None and bool(torch.isfinite(matrix.grad).all())


def test_float64_subnormal_jacobian_does_not_ask_for_an_infinite_scale() -> None:
    matrix = torch.tensor([[5e-324, 0.0], [0.0, 1e-320]], dtype=torch.float64)

    gramian = rescaled_gramian(matrix, "any")

    assert bool(torch.isfinite(gramian).all()) and bool((gramian.diagonal() > 0).all())
