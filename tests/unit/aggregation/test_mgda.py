"""MGDA and MGDAWeighting against their definition (Frank–Wolfe on the simplex)."""

from __future__ import annotations

import pytest
import torch
from _matrices import REFERENCE_JACOBIAN, random_jacobians

from jdoptim.aggregation import MGDA, MGDAWeighting


def test_reference_value() -> None:
    output = MGDA()(REFERENCE_JACOBIAN)

    torch.testing.assert_close(output, torch.tensor([0.0, 1.0, 1.0]), atol=1e-4, rtol=0)


def test_reference_weights() -> None:
    weights = MGDAWeighting()(REFERENCE_JACOBIAN @ REFERENCE_JACOBIAN.T)

    torch.testing.assert_close(weights, torch.tensor([0.6, 0.4]))


def test_one_frank_wolfe_step_by_hand() -> None:
    # α = 1/3: Gα = (1/3, 4/3, 3), t = 0, a = 1/3, b = 14/9, c = 1, so γ = 11/17.
    weights = MGDAWeighting(max_iters=1)(torch.diag(torch.tensor([1.0, 4.0, 9.0])))

    torch.testing.assert_close(weights, torch.tensor([13 / 17, 2 / 17, 2 / 17]))


def test_orthogonal_rows_converge_to_the_minimum_norm_point() -> None:
    # The min-norm point of the hull of orthogonal rows has weights ∝ 1/‖gᵢ‖².
    gramian = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))

    weights = MGDAWeighting(epsilon=1e-7, max_iters=10_000)(gramian)

    expected = torch.tensor([1.0, 1 / 4, 1 / 9], dtype=torch.float64) / (1 + 1 / 4 + 1 / 9)
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=0)


def test_opposite_rows_give_zero() -> None:
    torch.testing.assert_close(MGDA()(torch.tensor([[2.0], [-1.0]])), torch.tensor([0.0]))


def test_single_row_is_returned() -> None:
    row = torch.tensor([[3.0, -1.0, 2.0]])

    torch.testing.assert_close(MGDA()(row), row[0])


def test_zero_matrix_gives_zeros() -> None:
    assert torch.equal(MGDA()(torch.zeros(3, 4)), torch.zeros(4))


@pytest.mark.parametrize("matrix_index", range(16))
def test_weights_lie_in_the_simplex(matrix_index: int) -> None:
    jacobian = random_jacobians()[matrix_index]

    weights = MGDAWeighting()(jacobian @ jacobian.T)

    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("matrix_index", range(16))
def test_output_conflicts_with_no_row_up_to_epsilon(matrix_index: int) -> None:
    jacobian = random_jacobians()[matrix_index]
    epsilon = 1e-3

    products = jacobian @ MGDA(epsilon=epsilon)(jacobian)

    # Stopping at a step γ < ε leaves a Frank–Wolfe gap below a few ε · max ‖gᵢ‖².
    tolerance = 6 * epsilon * (jacobian**2).sum(dim=1).max()
    assert (products >= -tolerance).all()


def test_badly_scaled_rows_give_a_finite_output() -> None:
    scales = torch.logspace(-10, 15, 6)
    jacobian = torch.randn(6, 8) * scales[:, None]

    assert MGDA()(jacobian).isfinite().all()


def test_is_differentiable() -> None:
    jacobian = REFERENCE_JACOBIAN.double().requires_grad_()

    assert torch.autograd.gradcheck(MGDA(), (jacobian,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_has_the_input_dtype(dtype: torch.dtype) -> None:
    output = MGDA()(REFERENCE_JACOBIAN.to(dtype))

    assert output.dtype == dtype
    torch.testing.assert_close(
        output, torch.tensor([0.0, 1.0, 1.0], dtype=dtype), atol=2e-2, rtol=0
    )


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_input_gives_a_non_finite_output(bad_value: float) -> None:
    jacobian = REFERENCE_JACOBIAN.clone()
    jacobian[0, 0] = bad_value

    assert not MGDA()(jacobian).isfinite().all()


def test_repr_and_str() -> None:
    assert repr(MGDA()) == "MGDA(epsilon=0.001, max_iters=100)"
    assert repr(MGDAWeighting(0.0, 5)) == "MGDAWeighting(epsilon=0.0, max_iters=5)"
    assert str(MGDA()) == "MGDA"
    assert str(MGDAWeighting()) == "MGDAWeighting"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"epsilon": -1e-3}, ValueError, "epsilon"),
        ({"epsilon": "small"}, TypeError, "epsilon"),
        ({"max_iters": 0}, ValueError, "max_iters"),
        ({"max_iters": 2.5}, TypeError, "max_iters"),
        ({"max_iters": True}, TypeError, "max_iters"),
    ],
)
@pytest.mark.parametrize("cls", [MGDA, MGDAWeighting])
def test_invalid_arguments_are_rejected(
    cls: type, kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        cls(**kwargs)
