"""Constant: the weighted sum of the losses with fixed weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.scalarization import Constant

from ._helpers import finite_floats, reload, value_and_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient(dtype: torch.dtype) -> None:
    scalarizer = Constant(torch.tensor([1.0, -2.0, 0.5], dtype=dtype))

    value, grad = value_and_grad(scalarizer, torch.tensor([4.0, 1.0, 6.0], dtype=dtype))

    assert value.dtype == dtype
    assert value.item() == 5.0  # 4 - 2 + 3
    assert grad.tolist() == [1.0, -2.0, 0.5]


def test_multi_dimensional_weights_and_values() -> None:
    weights = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.25]])
    values = torch.tensor([[1.0, 1.0, 2.0], [4.0, 9.0, 8.0]])

    value, grad = value_and_grad(Constant(weights), values)

    assert value.item() == 7.0  # 1 + 2 + 6 - 4 + 0 + 2
    assert torch.equal(grad, weights)


def test_0d_weights() -> None:
    value, grad = value_and_grad(Constant(torch.tensor(3.0)), torch.tensor(2.5))

    assert value.item() == 7.5
    assert grad.item() == 3.0


def test_float32_weights_with_float64_values_promote_to_float64() -> None:
    value = Constant(torch.tensor([0.1, 0.2]))(torch.tensor([1.0, 1.0], dtype=torch.float64))

    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(0.3, abs=1e-7)


def test_weights_are_a_detached_buffer_copied_at_construction() -> None:
    weights = torch.tensor([1.0, 2.0], requires_grad=True)
    scalarizer = Constant(weights)
    with torch.no_grad():
        weights[0] = 100.0

    assert scalarizer(torch.tensor([1.0, 1.0])).item() == 3.0
    assert not scalarizer.weights.requires_grad
    assert dict(scalarizer.named_buffers()).keys() == {"weights"}
    assert list(scalarizer.parameters()) == []


def test_weights_may_be_reassigned_between_calls() -> None:
    scalarizer = Constant(torch.tensor([1.0, 2.0]))
    scalarizer.weights = torch.tensor([3.0, 4.0, 5.0])

    assert scalarizer(torch.tensor([1.0, 1.0, 1.0])).item() == 12.0
    assert "weights" in scalarizer.state_dict()


def test_integer_weights_become_the_default_float_dtype() -> None:
    scalarizer = Constant(torch.tensor([1, 2]))

    assert scalarizer.weights.dtype == torch.float32
    assert scalarizer(torch.tensor([1.5, 1.0])).item() == 3.5


def test_state_dict_round_trip() -> None:
    fresh = reload(Constant(torch.tensor([1.0, 2.0])), Constant(torch.tensor([0.0, 0.0])))

    assert fresh.weights.tolist() == [1.0, 2.0]


def test_weights_of_a_reshaped_size_are_refused() -> None:
    scalarizer = Constant(torch.ones(2, 3))

    with pytest.raises(ValueError, match=r"`weights`, \(2, 3\), but got shape \(6,\)"):
        scalarizer(torch.ones(6))


@pytest.mark.parametrize("weights", [[1.0, 2.0], 1.0, None, "w"])
def test_weights_that_are_not_a_tensor_raise_a_type_error(weights: object) -> None:
    with pytest.raises(TypeError, match=r"`weights` must be a torch\.Tensor, but got"):
        Constant(weights)  # type: ignore[arg-type]


@pytest.mark.parametrize("weights", [torch.tensor([True, False]), torch.tensor([1j, 2.0])])
def test_boolean_and_complex_weights_raise_a_type_error(weights: torch.Tensor) -> None:
    with pytest.raises(TypeError, match="`weights` must be a real tensor, but got dtype"):
        Constant(weights)


@given(
    st.lists(st.tuples(finite_floats, finite_floats, finite_floats), min_size=1, max_size=6),
    finite_floats,
    finite_floats,
)
def test_linearity(triples: list[tuple[float, float, float]], a: float, b: float) -> None:
    weights, first, second = (torch.tensor(column, dtype=torch.float64) for column in zip(*triples))
    scalarizer = Constant(weights)

    combined = scalarizer(a * first + b * second)

    expected = a * scalarizer(first) + b * scalarizer(second)
    torch.testing.assert_close(combined, expected, atol=1e-8, rtol=1e-10)
