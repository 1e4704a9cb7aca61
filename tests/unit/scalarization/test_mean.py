"""Mean: the arithmetic mean of the losses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

from jdoptim.scalarization import Mean, Sum

from ._helpers import finite_floats, value_and_grad, vectors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient(dtype: torch.dtype) -> None:
    value, grad = value_and_grad(Mean(), torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=dtype))

    assert value.dtype == dtype
    assert value.item() == 3.0
    assert grad.tolist() == [0.25] * 4


def test_multi_dimensional_values() -> None:
    value, grad = value_and_grad(Mean(), torch.tensor([[1.0, 3.0], [5.0, 7.0]]))

    assert value.item() == 4.0
    assert torch.equal(grad, torch.full((2, 2), 0.25))


def test_0d_values() -> None:
    value, grad = value_and_grad(Mean(), torch.tensor(2.5))

    assert value.item() == 2.5
    assert grad.item() == 1.0


def test_empty_values_give_nan() -> None:
    assert math.isnan(Mean()(torch.empty(0)).item())


def test_the_module_is_stateless() -> None:
    assert Mean().state_dict() == {}


@given(vectors(finite_floats), vectors(finite_floats), finite_floats, finite_floats)
def test_linearity(first: torch.Tensor, second: torch.Tensor, a: float, b: float) -> None:
    m = min(first.numel(), second.numel())
    first, second = first[:m], second[:m]

    combined = Mean()(a * first + b * second)

    torch.testing.assert_close(combined, a * Mean()(first) + b * Mean()(second), atol=1e-8, rtol=0)


@given(vectors(finite_floats))
def test_the_mean_is_the_sum_over_m(values: torch.Tensor) -> None:
    torch.testing.assert_close(Mean()(values), Sum()(values) / values.numel())
