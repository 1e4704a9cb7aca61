"""ConFIG: conflict-free direction from the pseudo-inverse of the unit rows."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from jdoptim.aggregation import ConFIG, NonDifferentiableError


def _cosines(matrix: Tensor, vector: Tensor) -> Tensor:
    return (matrix @ vector) / (matrix.norm(dim=1) * vector.norm())


def test_reference_value() -> None:
    output = ConFIG()(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))

    torch.testing.assert_close(output, torch.tensor([0.1588, 2.0706, 2.0706]), atol=1e-4, rtol=0)


def test_orthogonal_rows() -> None:
    # Unit rows e1, e2, e3: d = (1, 1, 1)/√3 and Σ gᵢ·d = (1 + 2 + 3)/√3, so the output is 2·1.
    matrix = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])

    output = ConFIG()(matrix)

    torch.testing.assert_close(output, torch.tensor([2.0, 2.0, 2.0, 0.0]))


def test_output_has_equal_cosines_with_all_rows() -> None:
    matrix = torch.randn(4, 7, dtype=torch.float64) * torch.tensor([[1e-3], [1.0], [5.0], [1e4]])

    output = ConFIG()(matrix)

    cosines = _cosines(matrix, output)
    torch.testing.assert_close(cosines, cosines[0].expand(4))
    assert (cosines > 0).all()


def test_cosines_are_proportional_to_the_preferences() -> None:
    matrix = torch.randn(3, 5, dtype=torch.float64)
    preferences = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)

    output = ConFIG(pref_vector=preferences)(matrix)

    cosines = _cosines(matrix, output)
    torch.testing.assert_close(cosines / cosines[0], preferences)


def test_nearly_parallel_rows_are_not_cut_off_when_n_is_large() -> None:
    # Singular values of U are about 1.4 and 1.4e-3; a cut-off of max(m, n)·eps ≈ 2.4e-3 would
    # treat the two rows as parallel.
    matrix = torch.zeros(2, 20_000, dtype=torch.float32)
    matrix[0, 0] = 1.0
    matrix[1, 0] = 1.0
    matrix[1, 1] = 0.002

    output = ConFIG()(matrix)

    cosines = _cosines(matrix, output)
    torch.testing.assert_close(cosines[0], cosines[1], atol=1e-5, rtol=0)


def test_zero_rows_are_ignored() -> None:
    matrix = torch.randn(3, 4)
    with_zero_row = torch.cat([matrix[:1], torch.zeros(1, 4), matrix[1:]])

    torch.testing.assert_close(ConFIG()(with_zero_row), ConFIG()(matrix))


def test_single_row_is_returned_unchanged() -> None:
    row = torch.tensor([[3.0, -4.0]])

    torch.testing.assert_close(ConFIG()(row), row[0])


def test_zero_matrix_gives_zeros() -> None:
    assert ConFIG()(torch.zeros(3, 5)).tolist() == [0.0] * 5


def test_positive_row_scaling_is_linear() -> None:
    matrix = torch.randn(3, 6, dtype=torch.float64)
    c1 = torch.tensor([0.5, 2.0, 1e-3], dtype=torch.float64)
    c2 = torch.tensor([3.0, 1e2, 0.25], dtype=torch.float64)
    aggregator = ConFIG()

    combined = aggregator((2.0 * c1 + 0.5 * c2)[:, None] * matrix)
    separate = 2.0 * aggregator(c1[:, None] * matrix) + 0.5 * aggregator(c2[:, None] * matrix)

    torch.testing.assert_close(combined, separate)


def test_non_finite_input_gives_nan_without_raising() -> None:
    for value in (float("nan"), float("inf")):
        output = ConFIG()(torch.tensor([[value, 1.0], [1.0, 2.0]]))
        assert output.isnan().all()


def test_pref_vector_of_the_wrong_length_names_the_parameter_and_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"`pref_vector`.*\[3\].*\[2, 4\]"):
        ConFIG(pref_vector=torch.ones(3))(torch.randn(2, 4))


def test_pref_vector_validation() -> None:
    with pytest.raises(TypeError, match="`pref_vector`"):
        ConFIG(pref_vector=[1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`pref_vector`"):
        ConFIG(pref_vector=torch.ones(2, 2))


def test_backward_raises_non_differentiable_error() -> None:
    matrix = torch.randn(2, 3, requires_grad=True)

    with pytest.raises(NonDifferentiableError, match="ConFIG"):
        ConFIG()(matrix).sum().backward()


def test_repr_and_str() -> None:
    assert repr(ConFIG()) == "ConFIG(pref_vector=None)"
    assert repr(ConFIG(pref_vector=torch.tensor([1.0, 2.0]))) == "ConFIG(pref_vector=[1.0,2.0])"
    assert str(ConFIG()) == "ConFIG"


def test_opposite_rows_of_very_different_scales_give_zero() -> None:
    # A positive combination of the unit rows vanishes: x = 0 in exact arithmetic, and the
    # rounding noise of the SVD must not become a direction (the output would then depend on
    # the order of the rows).
    row = torch.tensor([0.37802889943122864, 2.806967258453369])
    matrix = torch.stack([-1.196e-10 * row, row])

    assert ConFIG()(matrix).tolist() == [0.0, 0.0]
    assert ConFIG()(matrix.flip(0)).tolist() == [0.0, 0.0]
