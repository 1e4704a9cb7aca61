"""Random: random positive weights summing to 1, drawn anew at every call."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.scalarization import Random

from ._helpers import value_and_grad


def _expected_weights(seed: int, m: int, dtype: torch.dtype) -> torch.Tensor:
    """softmax of m standard normal numbers drawn in one call under ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(m, generator=generator, dtype=dtype).softmax(dim=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_weights_are_the_softmax_of_one_normal_draw_of_the_values_dtype(
    dtype: torch.dtype,
) -> None:
    torch.manual_seed(7)
    values = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dtype)

    value, grad = value_and_grad(Random(), values)

    weights = _expected_weights(7, 4, dtype)
    assert grad.dtype == dtype
    assert torch.equal(grad, weights)
    torch.testing.assert_close(value, (weights * values).sum(), atol=0, rtol=1e-6)


@pytest.mark.parametrize("m", [3, 40])
def test_float64_values_draw_float64_numbers_not_float32_ones(m: int) -> None:
    torch.manual_seed(0)
    _, grad32 = value_and_grad(Random(), torch.ones(m))
    torch.manual_seed(0)
    _, grad64 = value_and_grad(Random(), torch.ones(m, dtype=torch.float64))

    assert torch.equal(grad64, _expected_weights(0, m, torch.float64))
    assert not torch.equal(grad32.double(), grad64)


def test_a_call_consumes_exactly_one_draw_of_m_numbers() -> None:
    torch.manual_seed(3)
    Random()(torch.ones(2, 3))
    after_call = torch.randn(1)
    torch.manual_seed(3)
    torch.randn(6)
    after_draw = torch.randn(1)

    assert torch.equal(after_call, after_draw)


def test_multi_dimensional_values_get_the_flat_weights_reshaped() -> None:
    torch.manual_seed(5)
    _, grad = value_and_grad(Random(), torch.ones(2, 3))

    assert torch.equal(grad, _expected_weights(5, 6, torch.float32).reshape(2, 3))


def test_a_0d_value_gets_weight_1_and_draws_one_number() -> None:
    torch.manual_seed(2)
    value, grad = value_and_grad(Random(), torch.tensor(3.5))
    after_call = torch.randn(1)
    torch.manual_seed(2)
    torch.randn(1)

    assert value.item() == 3.5
    assert grad.item() == 1.0
    assert torch.equal(after_call, torch.randn(1))


def test_every_call_draws_new_weights() -> None:
    scalarizer = Random()
    _, first = value_and_grad(scalarizer, torch.ones(4))
    _, second = value_and_grad(scalarizer, torch.ones(4))

    assert not torch.equal(first, second)


def test_the_same_seed_gives_the_same_sequence() -> None:
    values = torch.tensor([1.0, 5.0, 2.0])
    torch.manual_seed(11)
    first = [Random()(values) for _ in range(3)]
    torch.manual_seed(11)
    second = [Random()(values) for _ in range(3)]

    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_empty_values_give_zero() -> None:
    assert Random()(torch.empty(0)).item() == 0.0


@given(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=2**31 - 1))
def test_the_weights_lie_on_the_simplex(m: int, seed: int) -> None:
    torch.manual_seed(seed)

    _, weights = value_and_grad(Random(), torch.ones(m, dtype=torch.float64))

    assert (weights > 0).all()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)


@given(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=2**31 - 1))
def test_the_value_lies_between_the_smallest_and_largest_loss(m: int, seed: int) -> None:
    values = torch.randn(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.manual_seed(seed)

    value = Random()(values)

    assert values.min() - 1e-12 <= value <= values.max() + 1e-12
