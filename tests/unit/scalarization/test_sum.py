"""Sum: the sum of the losses."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from jdoptim.scalarization import Constant, Sum

from ._helpers import finite_floats, value_and_grad, vectors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient(dtype: torch.dtype) -> None:
    value, grad = value_and_grad(Sum(), torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=dtype))

    assert value.dtype == dtype
    assert value.item() == 12.0
    assert grad.tolist() == [1.0] * 4


def test_multi_dimensional_and_0d_values() -> None:
    value, grad = value_and_grad(Sum(), torch.tensor([[1.0, 3.0], [5.0, 7.0]]))
    scalar_value, scalar_grad = value_and_grad(Sum(), torch.tensor(-2.5))

    assert value.item() == 16.0
    assert torch.equal(grad, torch.ones(2, 2))
    assert scalar_value.item() == -2.5
    assert scalar_grad.item() == 1.0


def test_empty_values_give_zero() -> None:
    assert Sum()(torch.empty(0, 3)).item() == 0.0


@given(vectors(finite_floats), vectors(finite_floats), finite_floats, finite_floats)
def test_linearity(first: torch.Tensor, second: torch.Tensor, a: float, b: float) -> None:
    m = min(first.numel(), second.numel())
    first, second = first[:m], second[:m]

    combined = Sum()(a * first + b * second)

    torch.testing.assert_close(combined, a * Sum()(first) + b * Sum()(second), atol=1e-8, rtol=0)


@given(vectors(finite_floats))
def test_the_sum_is_the_constant_scalarization_with_unit_weights(values: torch.Tensor) -> None:
    assert torch.equal(Sum()(values), Constant(torch.ones_like(values))(values))
