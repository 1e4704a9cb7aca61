"""Constant and ConstantWeighting: fixed weights given by the user."""

from __future__ import annotations

import pytest
import torch

from jdoptim.aggregation import Constant, ConstantWeighting

J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def test_reference_value() -> None:
    output = Constant(torch.tensor([1.0, 2.0]))(J)

    torch.testing.assert_close(output, torch.tensor([8.0, 3.0, 3.0]), atol=1e-4, rtol=0)


def test_weighting_returns_the_weights_with_the_gramian_dtype() -> None:
    weighting = ConstantWeighting(torch.tensor([0.5, 2.0, -1.0]))

    weights = weighting(torch.eye(3, dtype=torch.float64))

    assert weights.dtype == torch.float64
    assert weights.tolist() == [0.5, 2.0, -1.0]


def test_aggregator_exposes_its_weighting() -> None:
    aggregator = Constant(torch.tensor([1.0, 2.0]))

    assert isinstance(aggregator.gramian_weighting, ConstantWeighting)
    assert aggregator.weighting is aggregator.gramian_weighting


def test_weights_are_a_buffer_copied_at_construction() -> None:
    weights = torch.tensor([1.0, 2.0])
    aggregator = Constant(weights)
    weights[0] = 100.0

    assert torch.equal(aggregator(J), torch.tensor([8.0, 3.0, 3.0]))
    assert torch.equal(
        aggregator.state_dict()["gramian_weighting.weights"], torch.tensor([1.0, 2.0])
    )


def test_integer_weights_are_accepted() -> None:
    assert torch.equal(Constant(torch.tensor([1, 2]))(J), torch.tensor([8.0, 3.0, 3.0]))


def test_float16_input_gives_float16_output() -> None:
    output = Constant(torch.tensor([1.0, 2.0]))(J.half())

    assert output.dtype == torch.float16
    assert output.tolist() == [8.0, 3.0, 3.0]


def test_weights_of_the_wrong_length_name_the_parameter_and_the_shapes() -> None:
    aggregator = Constant(torch.tensor([1.0, 2.0, 3.0]))

    with pytest.raises(ValueError, match=r"`weights`.*\[3\].*\[2, 2\]"):
        aggregator(J)


def test_weights_must_be_a_tensor() -> None:
    with pytest.raises(TypeError, match="`weights`"):
        Constant([1.0, 2.0])  # type: ignore[arg-type]


def test_weights_must_be_one_dimensional() -> None:
    with pytest.raises(ValueError, match=r"`weights`.*\[1, 2\]"):
        ConstantWeighting(torch.tensor([[1.0, 2.0]]))


def test_weights_must_be_real() -> None:
    with pytest.raises(TypeError, match="`weights`"):
        Constant(torch.tensor([True, False]))


def test_repr_and_str() -> None:
    aggregator = Constant(torch.tensor([1.0, 2.0]))

    assert repr(aggregator) == "Constant(weights=tensor([1., 2.]))"
    assert str(aggregator) == "Constant([1., 2.])"
    assert repr(aggregator.gramian_weighting) == "ConstantWeighting(weights=tensor([1., 2.]))"
    assert str(Constant(torch.tensor([0.5, 1.0 / 3.0]))) == "Constant([0.5, 0.3333])"
