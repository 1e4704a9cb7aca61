"""GeometricMean: the geometric mean of the losses, computed in log space."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

from jdoptim.scalarization import GeometricMean

from ._helpers import positive_floats, value_and_grad, vectors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient(dtype: torch.dtype) -> None:
    values = torch.tensor([1.0, 4.0, 16.0], dtype=dtype)

    value, grad = value_and_grad(GeometricMean(), values)

    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    assert value.dtype == dtype
    assert value.item() == pytest.approx(4.0, rel=tolerance)
    # GM / (m L_i) = 4 / (3 L_i)
    expected = torch.tensor([4 / 3, 1 / 3, 1 / 12], dtype=dtype)
    torch.testing.assert_close(grad, expected, rtol=tolerance, atol=0)


def test_multi_dimensional_and_0d_values() -> None:
    values = torch.tensor([[2.0, 8.0], [1.0, 4.0]], dtype=torch.float64)  # product 64

    value, grad = value_and_grad(GeometricMean(), values)
    scalar_value, scalar_grad = value_and_grad(GeometricMean(), torch.tensor(3.0))

    assert value.item() == pytest.approx(64**0.25, rel=1e-14)
    torch.testing.assert_close(grad, 64**0.25 / (4 * values), rtol=1e-14, atol=0)
    assert scalar_value.item() == pytest.approx(3.0, rel=1e-6)
    assert scalar_grad.item() == pytest.approx(1.0, rel=1e-6)


def test_the_product_neither_overflows_nor_underflows() -> None:
    large = torch.full((50,), 1e30)  # the product would be 1e1500
    small = torch.full((50,), 1e-30)

    assert GeometricMean()(large).item() == pytest.approx(1e30, rel=1e-5)
    assert GeometricMean()(small).item() == pytest.approx(1e-30, rel=1e-5)


def test_a_zero_loss_gives_exactly_zero_with_nan_gradient_there_only() -> None:
    value, grad = value_and_grad(GeometricMean(), torch.tensor([2.0, 0.0, 3.0]))

    assert value.item() == 0.0
    assert math.isnan(grad[1].item())
    assert grad[0].item() == 0.0
    assert grad[2].item() == 0.0


@pytest.mark.parametrize("bad", [-1.0, -1e-30, float("-inf")])
def test_a_negative_entry_raises_a_value_error(bad: float) -> None:
    with pytest.raises(ValueError, match="`values` must be >= 0 for a geometric mean"):
        GeometricMean()(torch.tensor([1.0, bad, 2.0]))


def test_nan_gives_nan_inf_gives_inf_and_empty_gives_nan() -> None:
    assert math.isnan(GeometricMean()(torch.tensor([1.0, float("nan")])).item())
    assert GeometricMean()(torch.tensor([1.0, float("inf")])).item() == float("inf")
    assert math.isnan(GeometricMean()(torch.empty(0)).item())


@given(vectors(positive_floats))
def test_the_value_lies_between_the_smallest_and_largest_loss(values: torch.Tensor) -> None:
    value = GeometricMean()(values)

    assert values.min() * (1 - 1e-12) <= value <= values.max() * (1 + 1e-12)


@given(vectors(positive_floats), positive_floats)
def test_positive_homogeneity(values: torch.Tensor, scale: float) -> None:
    torch.testing.assert_close(
        GeometricMean()(scale * values), scale * GeometricMean()(values), rtol=1e-12, atol=0
    )


@given(vectors(positive_floats))
def test_the_geometric_mean_is_at_most_the_arithmetic_mean(values: torch.Tensor) -> None:
    assert GeometricMean()(values) <= values.mean() * (1 + 1e-12)
