"""COSMOS: the linear scalarization with a cosine penalty towards the preference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from jdoptim.scalarization import COSMOS, Constant

from ._helpers import finite_floats, positive_floats, reload, value_and_grad, vectors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient(dtype: torch.dtype) -> None:
    # r = [1, 0], L = [3, 4]: value = 3 - cos = 3 - 3/5.
    # d cos / dL = r / (|r| |L|) - (r.L) L / (|r| |L|^3) = [1/5 - 9/125, -12/125] = [0.128, -0.096],
    # so the gradient is r - that = [0.872, 0.096].
    scalarizer = COSMOS(1.0, torch.tensor([1.0, 0.0], dtype=dtype))

    value, grad = value_and_grad(scalarizer, torch.tensor([3.0, 4.0], dtype=dtype))

    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    assert value.dtype == dtype
    assert value.item() == pytest.approx(2.4, rel=tolerance)
    assert grad.tolist() == pytest.approx([0.872, 0.096], rel=tolerance)


def test_multi_dimensional_values_use_the_flattened_cosine() -> None:
    weights = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)  # norm 5
    values = torch.tensor([[2.0, 4.0], [4.0, 8.0]], dtype=torch.float64)  # parallel: cos = 1

    value, grad = value_and_grad(COSMOS(3.0, weights), values)

    assert value.item() == pytest.approx(50.0 - 3.0, rel=1e-14)
    # On the ray the cosine is maximal: its gradient vanishes and only r remains.
    torch.testing.assert_close(grad, weights, rtol=0, atol=1e-14)


def test_0d_values() -> None:
    value, grad = value_and_grad(COSMOS(0.5, torch.tensor(2.0)), torch.tensor(3.0))

    assert value.item() == pytest.approx(6.0 - 0.5)
    assert grad.item() == pytest.approx(2.0)


@given(vectors(finite_floats), vectors(finite_floats))
def test_lambda_zero_is_the_linear_scalarization(
    weights: torch.Tensor, values: torch.Tensor
) -> None:
    m = min(weights.numel(), values.numel())
    weights, values = weights[:m], values[:m]

    assert torch.equal(COSMOS(0.0, weights)(values), Constant(weights)(values))


@given(vectors(positive_floats), vectors(positive_floats))
def test_the_penalty_is_lambda_times_the_torch_cosine(
    weights: torch.Tensor, values: torch.Tensor
) -> None:
    m = min(weights.numel(), values.numel())
    weights, values = weights[:m], values[:m]
    cosine = torch.nn.functional.cosine_similarity(weights, values, dim=0)

    value = COSMOS(2.0, weights)(values)

    torch.testing.assert_close(value, (weights * values).sum() - 2.0 * cosine)


def test_all_zero_losses_give_a_zero_cosine_with_a_gradient_of_order_lambda_over_eps() -> None:
    scalarizer = COSMOS(1.0, torch.tensor([1.0, 0.0], dtype=torch.float64))

    value, grad = value_and_grad(scalarizer, torch.zeros(2, dtype=torch.float64))

    assert value.item() == 0.0
    # The norm of L is clamped to 1e-8, so d cos / dL = r / (|r| 1e-8).
    assert grad.tolist() == pytest.approx([1.0 - 1e8, 0.0], rel=1e-12)


def test_float32_weights_with_float64_values_promote_to_float64() -> None:
    value = COSMOS(1.0, torch.tensor([1.0, 0.0]))(torch.tensor([3.0, 4.0], dtype=torch.float64))

    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(2.4, rel=1e-14)


def test_weights_reload_into_a_fresh_instance_and_may_be_reassigned() -> None:
    fresh = reload(COSMOS(1.0, torch.tensor([1.0, 0.0])), COSMOS(1.0, torch.tensor([0.0, 1.0])))
    assert fresh(torch.tensor([3.0, 4.0])).item() == pytest.approx(2.4)

    fresh.weights = torch.tensor([0.0, 1.0])
    assert fresh(torch.tensor([3.0, 4.0])).item() == pytest.approx(4.0 - 0.8)


def test_weights_of_another_shape_raise_a_value_error_at_call_time() -> None:
    with pytest.raises(ValueError, match=r"`weights`, \(3,\), but got shape \(1, 3\)"):
        COSMOS(1.0, torch.ones(3))(torch.ones(1, 3))


@pytest.mark.parametrize("lambda_", [-0.1, float("nan"), float("inf")])
def test_lambda_must_be_a_finite_non_negative_number(lambda_: float) -> None:
    with pytest.raises(ValueError, match=r"`lambda_` must be a finite number >= 0, but got"):
        COSMOS(lambda_, torch.ones(2))


@pytest.mark.parametrize("lambda_", ["1", None, False])
def test_lambda_must_be_a_number(lambda_: object) -> None:
    with pytest.raises(TypeError, match="`lambda_` must be a number, but got"):
        COSMOS(lambda_, torch.ones(2))  # type: ignore[arg-type]


@pytest.mark.parametrize("weights", [None, [1.0, 2.0]])
def test_weights_are_a_required_tensor(weights: object) -> None:
    with pytest.raises(TypeError, match=r"`weights` must be a torch\.Tensor, but got"):
        COSMOS(1.0, weights)  # type: ignore[arg-type]
