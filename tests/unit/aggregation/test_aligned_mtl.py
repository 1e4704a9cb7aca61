"""AlignedMTL and AlignedMTLWeighting against their definition in the Aligned-MTL paper."""

from __future__ import annotations

import math

import pytest
import torch
from _matrices import REFERENCE_JACOBIAN
from torch import Tensor

from jdoptim.aggregation import AlignedMTL, AlignedMTLWeighting


def _basis(gramian: Tensor, scale_mode: str) -> Tensor:
    """The matrix B, recovered column by column with one-hot preference vectors."""
    m = gramian.shape[0]
    columns = [
        AlignedMTLWeighting(torch.eye(m)[i].to(gramian), scale_mode)(gramian) for i in range(m)
    ]
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize(("scale_mode", "scale"), [("min", 9.0), ("median", 9.0), ("rmse", 12.5)])
def test_orthogonal_rows(scale_mode: str, scale: float) -> None:
    # G = diag(9, 16): B = √s · diag(1/3, 1/4), so the output is √s · (½, ½).
    output = AlignedMTL(scale_mode=scale_mode)(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))

    expected = math.sqrt(scale) * torch.tensor([0.5, 0.5])
    torch.testing.assert_close(output, expected)


@pytest.mark.parametrize(("scale_mode", "scale"), [("min", 1.0), ("median", 4.0), ("rmse", 14 / 3)])
def test_scale_is_a_statistic_of_the_eigenvalues(scale_mode: str, scale: float) -> None:
    gramian = torch.diag(torch.tensor([4.0, 9.0, 1.0], dtype=torch.float64))

    weights = AlignedMTLWeighting(scale_mode=scale_mode)(gramian)

    expected = math.sqrt(scale) * torch.tensor([1 / 2, 1 / 3, 1.0], dtype=torch.float64) / 3
    torch.testing.assert_close(weights, expected)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_jacobian_has_equal_singular_values(scale_mode: str) -> None:
    jacobian = torch.randn(4, 6, dtype=torch.float64)
    gramian = jacobian @ jacobian.T
    eigenvalues = torch.linalg.eigvalsh(gramian)
    scale = {"min": eigenvalues[0], "median": eigenvalues[1], "rmse": eigenvalues.mean()}

    basis = _basis(gramian, scale_mode)

    # (B J)(B J)ᵀ = B G Bᵀ = s · I when every eigenvalue is kept.
    torch.testing.assert_close(basis @ gramian @ basis.T, scale[scale_mode] * torch.eye(4).double())


def test_rank_deficient_jacobian_keeps_only_the_non_zero_components() -> None:
    jacobian = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    gramian = jacobian @ jacobian.T  # eigenvalues 0, 2 and 4

    basis = _basis(gramian, "min")

    aligned = basis @ gramian @ basis.T
    projection = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]).double()
    torch.testing.assert_close(aligned, 2.0 * projection)


def test_reference_value() -> None:
    # G = [[18, -22], [-22, 38]] has eigenvalues 28 ± √500.
    output = AlignedMTL()(REFERENCE_JACOBIAN)

    torch.testing.assert_close(output, torch.tensor([0.2133, 0.9673, 0.9673]), atol=1e-4, rtol=0)


def test_pref_vector_weights_the_aligned_rows() -> None:
    output = AlignedMTL(pref_vector=torch.tensor([1.0, 0.0]))(
        torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    )

    torch.testing.assert_close(output, torch.tensor([3.0, 0.0]))


def test_single_row_is_returned() -> None:
    row = torch.tensor([[3.0, -1.0, 2.0]])

    torch.testing.assert_close(AlignedMTL()(row), row[0])


def test_single_parameter_gives_a_finite_output() -> None:
    output = AlignedMTL()(torch.tensor([[2.0], [3.0], [-1.0]]))

    assert output.shape == (1,)
    assert output.isfinite().all()


def test_zero_gramian_keeps_the_pref_vector() -> None:
    # No eigenvalue is kept: B = I.
    weights = AlignedMTLWeighting(torch.tensor([0.2, 0.8]))(torch.zeros(2, 2))

    torch.testing.assert_close(weights, torch.tensor([0.2, 0.8]))


def test_zero_matrix_gives_zeros() -> None:
    assert torch.equal(AlignedMTL()(torch.zeros(3, 4)), torch.zeros(4))


def test_badly_scaled_rows_give_a_finite_output() -> None:
    jacobian = torch.randn(6, 8) * torch.logspace(-10, 15, 6)[:, None]

    assert AlignedMTL()(jacobian).isfinite().all()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_input_gives_nan(bad_value: float) -> None:
    jacobian = REFERENCE_JACOBIAN.clone()
    jacobian[0, 0] = bad_value

    assert AlignedMTL()(jacobian).isnan().all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_has_the_input_dtype(dtype: torch.dtype) -> None:
    output = AlignedMTL()(REFERENCE_JACOBIAN.to(dtype))

    assert output.dtype == dtype
    expected = torch.tensor([0.2133, 0.9673, 0.9673], dtype=dtype)
    torch.testing.assert_close(output, expected, atol=2e-2, rtol=0)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_is_differentiable(scale_mode: str) -> None:
    jacobian = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, 3.0]])
    jacobian = jacobian.double().requires_grad_()

    assert torch.autograd.gradcheck(AlignedMTL(scale_mode=scale_mode), (jacobian,))


def test_pref_vector_of_the_wrong_length_is_rejected_at_call_time() -> None:
    with pytest.raises(ValueError, match=r"pref_vector.*\[3\].*\[2, 2\]"):
        AlignedMTL(pref_vector=torch.ones(3))(REFERENCE_JACOBIAN)


def test_repr_and_str() -> None:
    assert repr(AlignedMTL()) == "AlignedMTL(pref_vector=None, scale_mode='min')"
    assert repr(AlignedMTLWeighting(torch.tensor([0.3, 0.7]), "rmse")) == (
        "AlignedMTLWeighting(pref_vector=[0.3,0.7], scale_mode='rmse')"
    )
    assert str(AlignedMTL()) == "AlignedMTL"
    assert str(AlignedMTL(torch.tensor([0.3, 0.7]))) == "AlignedMTL([0.3,0.7])"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"scale_mode": "mean"}, ValueError, "scale_mode"),
        ({"scale_mode": None}, TypeError, "scale_mode"),
        ({"pref_vector": [0.5, 0.5]}, TypeError, "pref_vector"),
        ({"pref_vector": torch.ones(2, 2)}, ValueError, "pref_vector"),
    ],
)
@pytest.mark.parametrize("cls", [AlignedMTL, AlignedMTLWeighting])
def test_invalid_arguments_are_rejected(
    cls: type, kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        cls(**kwargs)
