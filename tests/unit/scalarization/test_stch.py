"""STCH: smooth Tchebycheff scalarization."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.scalarization import STCH

from ._helpers import finite_floats, reload, value_and_grad, vectors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_weights_are_one_over_m(dtype: torch.dtype) -> None:
    # y = [0.5, 1]: value = log(e^0.5 + e^1), gradient = 0.5 softmax(y).
    value, grad = value_and_grad(STCH(1.0), torch.tensor([1.0, 2.0], dtype=dtype))

    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    assert value.dtype == dtype
    assert value.item() == pytest.approx(math.log(math.exp(0.5) + math.exp(1.0)), rel=tolerance)
    share = math.exp(0.5) / (math.exp(0.5) + math.exp(1.0))
    expected = [0.5 * share, 0.5 * (1 - share)]
    assert grad.tolist() == pytest.approx(expected, rel=tolerance)


def test_weights_reference_and_mu() -> None:
    scalarizer = STCH(
        0.5,
        weights=torch.tensor([2.0, 1.0], dtype=torch.float64),
        reference=torch.tensor([1.0, -1.0], dtype=torch.float64),
    )
    # y = [2 (3 - 1), 1 (2 + 1)] = [4, 3]; value = 0.5 log(e^8 + e^6).
    value, grad = value_and_grad(scalarizer, torch.tensor([3.0, 2.0], dtype=torch.float64))

    assert value.item() == pytest.approx(0.5 * math.log(math.exp(8.0) + math.exp(6.0)), rel=1e-14)
    share = math.exp(8.0) / (math.exp(8.0) + math.exp(6.0))
    assert grad.tolist() == pytest.approx([2.0 * share, 1.0 * (1 - share)], rel=1e-14)


def test_multi_dimensional_values_use_a_softmax_over_all_entries() -> None:
    values = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float64)

    value, grad = value_and_grad(STCH(2.0, weights=torch.ones(2, 2, dtype=torch.float64)), values)

    flat = values.flatten()
    assert value.item() == pytest.approx(2.0 * torch.logsumexp(flat / 2.0, 0).item(), rel=1e-14)
    torch.testing.assert_close(grad, (flat / 2.0).softmax(0).reshape(2, 2), rtol=1e-14, atol=0)


def test_0d_values() -> None:
    value, grad = value_and_grad(STCH(0.3), torch.tensor(2.5))

    assert value.item() == 2.5
    assert grad.item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_losses_with_a_tiny_mu_do_not_overflow(dtype: torch.dtype) -> None:
    values = torch.tensor([1e30, 3e30, 2e30], dtype=dtype)
    scalarizer = STCH(1e-30, weights=torch.ones(3, dtype=dtype))

    value, grad = value_and_grad(scalarizer, values)

    assert value.item() == values[1].item()
    assert grad.tolist() == [0.0, 1.0, 0.0]


def test_equal_maxima_share_the_gradient() -> None:
    value, grad = value_and_grad(
        STCH(1e-20, weights=torch.ones(3, dtype=torch.float64)),
        torch.tensor([5.0, 5.0, 1.0], dtype=torch.float64),
    )

    assert value.item() == pytest.approx(5.0 + 1e-20 * math.log(2.0), rel=1e-15)
    assert grad.tolist() == [0.5, 0.5, 0.0]


def test_inf_loss_gives_a_non_finite_value_and_empty_values_give_minus_inf() -> None:
    assert not torch.isfinite(STCH(0.1)(torch.tensor([1.0, float("inf")])))
    assert STCH(0.1)(torch.empty(0)).item() == float("-inf")


def test_weights_and_reference_are_buffers_that_reload_into_a_fresh_instance() -> None:
    source = STCH(0.5, weights=torch.tensor([1.0, 2.0]), reference=torch.tensor([0.5, 0.0]))
    fresh = reload(
        source, STCH(0.5, weights=torch.tensor([0.0, 0.0]), reference=torch.tensor([0.0, 0.0]))
    )

    values = torch.tensor([1.0, 3.0])
    assert torch.equal(fresh(values), source(values))
    assert list(dict(source.named_buffers())) == ["weights", "reference"]


def test_weights_assigned_after_construction_reload_into_an_instance_built_with_none() -> None:
    source = STCH(0.5)
    source.weights = torch.tensor([0.3, 0.7])
    source.reference = torch.tensor([1.0, 0.0])

    fresh = reload(source, STCH(0.5))

    assert isinstance(fresh, STCH)
    assert fresh.weights is not None
    assert fresh.reference is not None
    assert fresh.weights.tolist() == pytest.approx([0.3, 0.7])
    values = torch.tensor([2.0, 3.0])
    assert torch.equal(fresh(values), source(values))


def test_weights_may_be_reassigned_between_calls() -> None:
    scalarizer = STCH(1e-6)
    scalarizer.weights = torch.tensor([1.0, 10.0])

    assert scalarizer(torch.tensor([3.0, 1.0])).item() == pytest.approx(10.0)


@pytest.mark.parametrize("name", ["weights", "reference"])
def test_a_tensor_of_another_shape_raises_a_value_error_at_call_time(name: str) -> None:
    scalarizer = STCH(0.5, **{name: torch.ones(2, 2)})

    with pytest.raises(ValueError, match=rf"`{name}`, \(2, 2\), but got shape \(4,\)"):
        scalarizer(torch.ones(4))


@pytest.mark.parametrize("mu", [0, 0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_mu_must_be_a_finite_positive_number(mu: float) -> None:
    with pytest.raises(ValueError, match=r"`mu` must be a finite number > 0, but got"):
        STCH(mu)


@pytest.mark.parametrize("mu", ["0.1", None, True, torch.tensor(0.1)])
def test_mu_must_be_a_number(mu: object) -> None:
    with pytest.raises(TypeError, match="`mu` must be a number, but got"):
        STCH(mu)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["weights", "reference"])
def test_weights_and_reference_must_be_tensors_or_none(name: str) -> None:
    with pytest.raises(TypeError, match=rf"`{name}` must be a torch\.Tensor or None, but got list"):
        STCH(0.5, **{name: [1.0, 2.0]})  # type: ignore[arg-type]


@given(vectors(finite_floats), st.floats(min_value=1e-3, max_value=10.0))
def test_the_value_is_bounded_by_the_max_and_the_max_plus_mu_log_m(
    values: torch.Tensor, mu: float
) -> None:
    y_max = (values / values.numel()).max().item()

    value = STCH(mu)(values).item()

    assert y_max - 1e-9 <= value <= y_max + mu * math.log(values.numel()) + 1e-9


@given(vectors(finite_floats, min_size=2))
def test_the_value_tends_to_the_weighted_max_as_mu_tends_to_zero(values: torch.Tensor) -> None:
    weights = torch.linspace(0.5, 1.5, values.numel(), dtype=torch.float64)
    y_max = (weights * values).max().item()

    gaps = [STCH(mu, weights=weights)(values).item() - y_max for mu in (1.0, 1e-2, 1e-4, 1e-8)]

    assert all(
        0 <= gap <= mu * math.log(values.numel()) + 1e-12
        for gap, mu in zip(gaps, (1.0, 1e-2, 1e-4, 1e-8))
    )
    assert gaps[-1] <= 1e-7


@given(vectors(finite_floats), st.floats(min_value=1e-2, max_value=10.0))
def test_the_gradient_is_the_weights_times_the_softmax(values: torch.Tensor, mu: float) -> None:
    weights = torch.linspace(0.2, 1.0, values.numel(), dtype=torch.float64)

    _, grad = value_and_grad(STCH(mu, weights=weights), values)

    expected = weights * (weights * values / mu).softmax(0)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)
