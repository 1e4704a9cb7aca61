"""UW: uncertainty weighting with learned log-variances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jdoptim.scalarization import UW

from ._helpers import reload


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradients(dtype: torch.dtype) -> None:
    scalarizer = UW(2)
    with torch.no_grad():
        scalarizer.log_var.copy_(torch.tensor([0.0, math.log(2.0)]))
    values = torch.tensor([2.0, 4.0], dtype=dtype, requires_grad=True)

    value = scalarizer(values)
    value.backward()

    # 0.5 * 2 + 0 + 0.5 * 0.5 * 4 + 0.5 log 2
    assert value.dtype == dtype
    assert value.item() == pytest.approx(2.0 + 0.5 * math.log(2.0), rel=1e-6)
    assert values.grad is not None
    assert values.grad.tolist() == pytest.approx([0.5, 0.25], rel=1e-6)
    # 0.5 (1 - e^{-s} L) = 0.5 (1 - 2) for both
    assert scalarizer.log_var.grad is not None
    assert scalarizer.log_var.grad.tolist() == pytest.approx([-0.5, -0.5], rel=1e-6)


def test_the_log_var_gradient_vanishes_at_the_log_of_the_losses() -> None:
    values = torch.tensor([[0.5, 2.0], [3.0, 7.0]])
    scalarizer = UW((2, 2))
    with torch.no_grad():
        scalarizer.log_var.copy_(values.log())

    scalarizer(values).backward()

    assert scalarizer.log_var.grad is not None
    torch.testing.assert_close(scalarizer.log_var.grad, torch.zeros(2, 2), atol=1e-7, rtol=0)


def test_an_optimizer_learns_the_log_of_the_losses() -> None:
    values = torch.tensor([0.5, 4.0])
    scalarizer = UW(2)
    optimizer = torch.optim.SGD(scalarizer.parameters(), lr=0.5)

    for _ in range(200):
        optimizer.zero_grad()
        scalarizer(values).backward()
        optimizer.step()

    torch.testing.assert_close(scalarizer.log_var.detach(), values.log(), atol=1e-4, rtol=0)


def test_log_var_is_a_zero_parameter_of_the_default_dtype() -> None:
    scalarizer = UW([2, 3])

    assert isinstance(scalarizer.log_var, torch.nn.Parameter)
    assert scalarizer.log_var.dtype == torch.get_default_dtype()
    assert torch.equal(scalarizer.log_var, torch.zeros(2, 3))
    assert [name for name, _ in scalarizer.named_parameters()] == ["log_var"]


def test_0d_shape() -> None:
    scalarizer = UW(())

    assert scalarizer(torch.tensor(3.0)).item() == 1.5


def test_reset_zeroes_the_same_parameter_in_place() -> None:
    scalarizer = UW(3)
    parameter = scalarizer.log_var
    with torch.no_grad():
        parameter.add_(1.0)

    scalarizer.reset()

    assert scalarizer.log_var is parameter
    assert torch.equal(parameter, torch.zeros(3))


def test_state_dict_round_trip() -> None:
    source = UW(2)
    with torch.no_grad():
        source.log_var.copy_(torch.tensor([0.3, -0.7]))

    fresh = reload(source, UW(2))

    values = torch.tensor([1.0, 2.0])
    assert torch.equal(fresh(values), source(values))


@pytest.mark.parametrize("shape", ["3", 3.0, True, [1.5], (2, None), None])
def test_bad_shape_types_raise_a_type_error(shape: object) -> None:
    with pytest.raises(TypeError, match="`shape` must be an int or a sequence of ints"):
        UW(shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [-1, (2, -3)])
def test_negative_sizes_raise_a_value_error(shape: object) -> None:
    with pytest.raises(ValueError, match="`shape` must hold sizes >= 0"):
        UW(shape)  # type: ignore[arg-type]


def test_values_of_another_shape_raise_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"`log_var`, \(2, 3\), but got shape \(6,\)"):
        UW((2, 3))(torch.ones(6))


def test_numpy_integers_are_accepted_as_sizes() -> None:
    assert repr(UW(np.int64(3))) == "UW(shape=(3,))"
    assert repr(UW((np.int32(2), 3))) == "UW(shape=(2, 3))"
