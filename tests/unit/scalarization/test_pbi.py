"""PBI: penalty-based boundary intersection."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.scalarization import PBI

from ._helpers import finite_floats, positive_floats, reload, value_and_grad, vectors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient(dtype: torch.dtype) -> None:
    # w = [1, 1], L = [1, 3]: d = [1, 1]/sqrt(2), d1 = 2 sqrt(2), p = [-1, 1], d2 = sqrt(2 + 1e-12).
    scalarizer = PBI(5.0, torch.tensor([1.0, 1.0], dtype=dtype))

    value, grad = value_and_grad(scalarizer, torch.tensor([1.0, 3.0], dtype=dtype))

    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    d2 = math.sqrt(2.0 + 1e-12)
    assert value.dtype == dtype
    assert value.item() == pytest.approx(2 * math.sqrt(2.0) + 5.0 * d2, rel=tolerance)
    # The gradient is d + theta p / d2.
    unit = 1 / math.sqrt(2.0)
    assert grad.tolist() == pytest.approx([unit - 5.0 / d2, unit + 5.0 / d2], rel=tolerance)


def test_reference_and_multi_dimensional_values() -> None:
    weights = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    reference = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    # f = [2, 3]: d1 = 2, d2 = sqrt(9 + 1e-12).

    value, grad = value_and_grad(
        PBI(2.0, weights, reference), torch.tensor([[3.0], [2.0]], dtype=torch.float64)
    )

    d2 = math.sqrt(9.0 + 1e-12)
    assert value.item() == pytest.approx(2.0 + 2.0 * d2, rel=1e-14)
    assert grad.flatten().tolist() == pytest.approx([1.0, 2.0 * 3.0 / d2], rel=1e-14)


def test_one_loss_is_always_on_the_ray() -> None:
    value, grad = value_and_grad(
        PBI(5.0, torch.tensor([2.0], dtype=torch.float64)), torch.tensor([3.0], dtype=torch.float64)
    )

    assert value.item() == 3.0 + 5.0 * 1e-6
    assert grad.tolist() == [1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_on_the_ray_the_gradient_is_finite(dtype: torch.dtype) -> None:
    value, grad = value_and_grad(
        PBI(5.0, torch.tensor([1.0, 2.0, 2.0], dtype=dtype)),
        torch.tensor([2.0, 4.0, 4.0], dtype=dtype),
    )

    assert value.item() == pytest.approx(6.0, abs=1e-5)
    assert torch.isfinite(grad).all()
    if dtype == torch.float64:
        # The rounding error of p is about 1e-16, tiny next to d2 = 1e-6: the gradient is d.
        assert grad.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3], abs=1e-8)


def test_near_the_ray_the_distance_does_not_cancel_catastrophically() -> None:
    # f = [1e8, 1e8 + 1]: the distance to the diagonal is 1/sqrt(2), while |f|^2 - d1^2 loses it
    # entirely in float64 (|f|^2 is about 2e16).
    values = torch.tensor([1e8, 1e8 + 1.0], dtype=torch.float64)
    weights = torch.tensor([1.0, 1.0], dtype=torch.float64)

    value = PBI(1.0, weights)(values)

    d1 = (values.sum() / math.sqrt(2.0)).item()
    assert value.item() - d1 == pytest.approx(math.sqrt(0.5), rel=1e-6)


def test_below_the_reference_the_signed_progress_keeps_rewarding_lower_losses() -> None:
    scalarizer = PBI(0.0, torch.tensor([1.0, 1.0], dtype=torch.float64))

    lower = scalarizer(torch.tensor([-2.0, -2.0], dtype=torch.float64))
    higher = scalarizer(torch.tensor([-1.0, -1.0], dtype=torch.float64))

    assert lower.item() == pytest.approx(-2 * math.sqrt(2.0), rel=1e-14)
    assert lower < higher


def test_all_zero_weights_give_nan() -> None:
    assert math.isnan(PBI(5.0, torch.zeros(2))(torch.tensor([1.0, 2.0])).item())


def test_float32_weights_with_float64_values_promote_to_float64() -> None:
    value = PBI(5.0, torch.tensor([1.0, 0.0]))(torch.tensor([3.0, 4.0], dtype=torch.float64))

    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(23.0, rel=1e-14)


def test_weights_and_reference_reload_into_a_fresh_instance() -> None:
    source = PBI(5.0, torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5]))
    fresh = reload(source, PBI(5.0, torch.ones(2), torch.zeros(2)))

    values = torch.tensor([1.0, 3.0])
    assert torch.equal(fresh(values), source(values))


def test_a_reference_assigned_after_construction_reloads_into_an_instance_built_with_none() -> None:
    source = PBI(5.0, torch.tensor([1.0, 2.0]))
    source.reference = torch.tensor([0.5, -0.5])

    fresh = reload(source, PBI(5.0, torch.ones(2)))

    values = torch.tensor([1.0, 3.0])
    assert torch.equal(fresh(values), source(values))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"weights": torch.ones(2, 2)}, "weights"), ({"reference": torch.ones(2, 2)}, "reference")],
)
def test_a_tensor_of_another_shape_raises_a_value_error_at_call_time(
    kwargs: dict[str, torch.Tensor], name: str
) -> None:
    arguments = {"weights": torch.ones(4), **kwargs}

    with pytest.raises(ValueError, match=rf"`{name}`, \(2, 2\), but got shape \(4,\)"):
        PBI(1.0, **arguments)(torch.ones(4))


@pytest.mark.parametrize("theta", [-1.0, float("nan"), float("inf")])
def test_theta_must_be_a_finite_non_negative_number(theta: float) -> None:
    with pytest.raises(ValueError, match=r"`theta` must be a finite number >= 0, but got"):
        PBI(theta, torch.ones(2))


def test_bad_types_raise_type_errors() -> None:
    with pytest.raises(TypeError, match="`theta` must be a number, but got str"):
        PBI("5", torch.ones(2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`weights` must be a torch\.Tensor, but got NoneType"):
        PBI(5.0, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`reference` must be a torch\.Tensor or None, but got"):
        PBI(5.0, torch.ones(2), 0)  # type: ignore[arg-type]


@given(vectors(positive_floats, min_size=2), st.floats(min_value=0.0, max_value=10.0))
def test_the_value_matches_the_geometric_decomposition(values: torch.Tensor, theta: float) -> None:
    weights = torch.linspace(1.0, 2.0, values.numel(), dtype=torch.float64)
    unit = weights / weights.norm()
    d1 = values @ unit
    d2 = torch.sqrt((values - d1 * unit).square().sum() + 1e-12)

    value = PBI(theta, weights)(values)

    torch.testing.assert_close(value, d1 + theta * d2, rtol=1e-10, atol=1e-10)


@given(vectors(finite_floats, min_size=2), st.floats(min_value=0.0, max_value=10.0))
def test_the_value_is_at_least_the_progress_along_the_ray(
    values: torch.Tensor, theta: float
) -> None:
    weights = torch.ones_like(values)
    d1 = values.sum() / math.sqrt(values.numel())

    assert PBI(theta, weights)(values) >= d1 - 1e-9
