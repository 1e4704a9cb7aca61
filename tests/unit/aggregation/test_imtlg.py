"""IMTLG and IMTLGWeighting against their definition in the IMTL paper."""

from __future__ import annotations

import pytest
import torch
from _matrices import REFERENCE_JACOBIAN

from jdoptim.aggregation import IMTLG, IMTLGWeighting, NonDifferentiableError


def test_reference_weights_match_the_definition() -> None:
    # G = [[18, -22], [-22, 38]], G⁻¹ = [[38, 22], [22, 18]] / 200, d = (√18, √38).
    d = torch.tensor([18.0, 38.0], dtype=torch.float64).sqrt()
    v = torch.tensor([[38.0, 22.0], [22.0, 18.0]], dtype=torch.float64) @ d / 200

    weights = IMTLGWeighting()(REFERENCE_JACOBIAN @ REFERENCE_JACOBIAN.T)

    torch.testing.assert_close(weights, (v / v.sum()).float())


def test_reference_value() -> None:
    output = IMTLG()(REFERENCE_JACOBIAN)

    torch.testing.assert_close(output, torch.tensor([0.0767, 1.0, 1.0]), atol=1e-4, rtol=0)


def test_orthogonal_rows_are_weighted_by_inverse_norms() -> None:
    output = IMTLG()(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))

    torch.testing.assert_close(output, torch.tensor([2 / 3, 2 / 3]))


@pytest.mark.parametrize(("m", "n"), [(2, 2), (3, 5), (5, 8), (8, 8)])
def test_projections_on_the_unit_rows_are_equal(m: int, n: int) -> None:
    jacobian = torch.randn(m, n, dtype=torch.float64)

    output = IMTLG()(jacobian)

    projections = jacobian @ output / jacobian.norm(dim=1)
    torch.testing.assert_close(projections, projections[0].expand(m))


@pytest.mark.parametrize("ratio", [1e2, 1e4, 1e6])
def test_float32_rows_of_very_different_norms_keep_equal_projections(ratio: float) -> None:
    # The Gramian's eigenvalues differ by ratio², far below float32's precision for ratio ≥ 1e4:
    # the rank is judged on the Gramian of the unit rows, so the small row still counts.
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(3, 50, generator=generator)
    jacobian = jacobian * torch.tensor([[1.0], [1.0 / ratio], [ratio]])

    output = IMTLG()(jacobian).double()

    rows = jacobian.double()
    projections = rows @ output / rows.norm(dim=1)
    torch.testing.assert_close(projections, projections[0].expand(3), rtol=1e-3, atol=0)


@pytest.mark.parametrize(("m", "n"), [(1, 3), (3, 5), (6, 2)])
def test_weights_sum_to_one(m: int, n: int) -> None:
    jacobian = torch.randn(m, n, dtype=torch.float64)

    weights = IMTLGWeighting()(jacobian @ jacobian.T)

    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_single_row_is_returned() -> None:
    row = torch.tensor([[3.0, -1.0, 2.0]])

    torch.testing.assert_close(IMTLG()(row), row[0])


def test_single_parameter_gives_a_finite_output() -> None:
    output = IMTLG()(torch.tensor([[2.0], [3.0], [-1.0]]))

    assert output.shape == (1,)
    assert output.isfinite().all()


def test_zero_matrix_gives_zero_weights_and_output() -> None:
    assert torch.equal(IMTLGWeighting()(torch.zeros(3, 3)), torch.zeros(3))
    assert torch.equal(IMTLG()(torch.zeros(3, 4)), torch.zeros(4))


def test_rows_summing_to_zero_give_zero_weights() -> None:
    # Two opposite rows: v = G⁺d is orthogonal to (1, 1), so Σv = 0.
    assert torch.equal(IMTLGWeighting()(torch.tensor([[1.0, -1.0], [-1.0, 1.0]])), torch.zeros(2))


@pytest.mark.parametrize("scale", [1e-12, 1e-6, 1e6, 1e13, 1e15])
def test_output_scales_with_the_jacobian(scale: float) -> None:
    # w does not depend on the scale of J, so A(sJ) = s A(J) (large gradients are not zeroed).
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)

    output = IMTLG()(scale * jacobian)

    torch.testing.assert_close(output, scale * torch.tensor([2 / 3, 2 / 3], dtype=torch.float64))


def test_badly_scaled_rows_give_a_finite_output() -> None:
    jacobian = torch.randn(6, 8) * torch.logspace(-10, 15, 6)[:, None]

    assert IMTLG()(jacobian).isfinite().all()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_input_gives_nan(bad_value: float) -> None:
    jacobian = REFERENCE_JACOBIAN.clone()
    jacobian[0, 0] = bad_value

    assert IMTLG()(jacobian).isnan().all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_has_the_input_dtype(dtype: torch.dtype) -> None:
    output = IMTLG()(REFERENCE_JACOBIAN.to(dtype))

    assert output.dtype == dtype
    expected = torch.tensor([0.0767, 1.0, 1.0], dtype=dtype)
    torch.testing.assert_close(output, expected, atol=2e-2, rtol=0)


def test_backward_through_the_output_raises() -> None:
    jacobian = REFERENCE_JACOBIAN.clone().requires_grad_()

    with pytest.raises(NonDifferentiableError, match="IMTLG"):
        IMTLG()(jacobian).sum().backward()


def test_backward_through_the_weights_raises() -> None:
    jacobian = REFERENCE_JACOBIAN.clone().requires_grad_()

    with pytest.raises(NonDifferentiableError, match="IMTLGWeighting"):
        IMTLGWeighting()(jacobian @ jacobian.T).sum().backward()


def test_repr_and_str() -> None:
    assert repr(IMTLG()) == "IMTLG()"
    assert repr(IMTLGWeighting()) == "IMTLGWeighting()"
    assert str(IMTLG()) == "IMTLG"
    assert str(IMTLGWeighting()) == "IMTLGWeighting"
