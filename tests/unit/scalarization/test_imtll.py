"""IMTLL: the loss-balance part of impartial multi-task learning."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

from jdoptim.scalarization import IMTLL, UW

from ._helpers import finite_floats, positive_floats, reload, vectors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradients(dtype: torch.dtype) -> None:
    scalarizer = IMTLL(2)
    with torch.no_grad():
        scalarizer.log_scale.copy_(torch.tensor([0.0, math.log(0.5)]))
    values = torch.tensor([2.0, 4.0], dtype=dtype, requires_grad=True)

    value = scalarizer(values)
    value.backward()

    # 2 - 0 + 0.5 * 4 - log 0.5
    assert value.dtype == dtype
    assert value.item() == pytest.approx(4.0 + math.log(2.0), rel=1e-6)
    assert values.grad is not None
    assert values.grad.tolist() == pytest.approx([1.0, 0.5], rel=1e-6)
    # e^s L - 1
    assert scalarizer.log_scale.grad is not None
    assert scalarizer.log_scale.grad.tolist() == pytest.approx([1.0, 1.0], rel=1e-6)


def test_an_optimizer_makes_every_scaled_loss_equal_to_one() -> None:
    values = torch.tensor([[0.5, 4.0]])
    scalarizer = IMTLL((1, 2))
    optimizer = torch.optim.SGD(scalarizer.parameters(), lr=0.1)

    for _ in range(300):
        optimizer.zero_grad()
        scalarizer(values).backward()
        optimizer.step()

    scaled = scalarizer.log_scale.detach().exp() * values
    torch.testing.assert_close(scaled, torch.ones(1, 2), atol=1e-4, rtol=0)


@given(vectors(positive_floats, min_size=3, max_size=3), vectors(finite_floats, 3, 3))
def test_imtll_is_twice_uw_with_the_opposite_parameters(
    values: torch.Tensor, scales: torch.Tensor
) -> None:
    scales = scales / 50  # keep e^s moderate
    imtll, uw = IMTLL(3).double(), UW(3).double()
    with torch.no_grad():
        imtll.log_scale.copy_(scales)
        uw.log_var.copy_(-scales)

    torch.testing.assert_close(imtll(values), 2 * uw(values), rtol=1e-12, atol=1e-12)


def test_log_scale_is_a_zero_parameter_and_the_only_one() -> None:
    scalarizer = IMTLL(torch.Size([4]))

    assert isinstance(scalarizer.log_scale, torch.nn.Parameter)
    assert torch.equal(scalarizer.log_scale, torch.zeros(4))
    assert [name for name, _ in scalarizer.named_parameters()] == ["log_scale"]


def test_reset_zeroes_the_same_parameter_in_place() -> None:
    scalarizer = IMTLL(3)
    parameter = scalarizer.log_scale
    with torch.no_grad():
        parameter.add_(1.0)

    scalarizer.reset()

    assert scalarizer.log_scale is parameter
    assert torch.equal(parameter, torch.zeros(3))


def test_state_dict_round_trip() -> None:
    source = IMTLL(2)
    with torch.no_grad():
        source.log_scale.copy_(torch.tensor([0.3, -0.7]))

    fresh = reload(source, IMTLL(2))

    values = torch.tensor([1.0, 2.0])
    assert torch.equal(fresh(values), source(values))


def test_bad_shapes_and_values() -> None:
    with pytest.raises(TypeError, match="`shape` must be an int or a sequence of ints"):
        IMTLL("2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`shape` must hold sizes >= 0"):
        IMTLL(-2)
    with pytest.raises(ValueError, match=r"`log_scale`, \(2,\), but got shape \(3,\)"):
        IMTLL(2)(torch.ones(3))
