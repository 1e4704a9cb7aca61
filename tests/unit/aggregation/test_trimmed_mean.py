"""TrimmedMean: coordinate-wise mean without the extremes."""

from __future__ import annotations

import pytest
import torch

from jdoptim.aggregation import Mean, TrimmedMean


def test_per_column_by_hand() -> None:
    matrix = torch.tensor(
        [
            [1.0, 9.0, 0.0],
            [2.0, -7.0, 0.0],
            [3.0, 1.0, 5.0],
            [100.0, 2.0, 0.0],
            [-50.0, 4.0, 1.0],
        ]
    )
    # Column 0: drop -50 and 100 -> mean(1, 2, 3) = 2.
    # Column 1: drop -7 and 9 -> mean(1, 2, 4) = 7/3.
    # Column 2: drop one 0 and 5 -> mean(0, 0, 1) = 1/3.
    output = TrimmedMean(trim_number=1)(matrix)

    torch.testing.assert_close(output, torch.tensor([2.0, 7.0 / 3.0, 1.0 / 3.0]))


def test_trimming_two_keeps_the_median_of_five() -> None:
    matrix = torch.tensor([[5.0], [-1.0], [3.0], [1e6], [2.0]])

    assert TrimmedMean(trim_number=2)(matrix).tolist() == [3.0]


def test_trim_number_zero_is_the_mean() -> None:
    matrix = torch.randn(4, 6)

    torch.testing.assert_close(TrimmedMean(trim_number=0)(matrix), Mean()(matrix))


def test_dtypes_are_kept() -> None:
    matrix = torch.tensor([[1.0], [2.0], [30.0]])

    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        output = TrimmedMean(1)(matrix.to(dtype))
        assert output.dtype == dtype
        assert output.tolist() == [2.0]


def test_too_few_rows_name_the_parameter_and_the_shape() -> None:
    with pytest.raises(ValueError, match=r"`trim_number`.*\[2, 3\]"):
        TrimmedMean(trim_number=1)(torch.ones(2, 3))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="`trim_number`"):
        TrimmedMean(-1)
    with pytest.raises(TypeError, match="`trim_number`"):
        TrimmedMean(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`trim_number`"):
        TrimmedMean(True)


def test_repr_and_str() -> None:
    assert repr(TrimmedMean(2)) == "TrimmedMean(trim_number=2)"
    assert str(TrimmedMean(2)) == "TrimmedMean"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_not_trimmed_away(value: float) -> None:
    matrix = torch.tensor([[1.0, 5.0], [2.0, 6.0], [value, 7.0]])

    output = TrimmedMean(trim_number=1)(matrix)

    assert output[0].isnan()
    assert output[1] == 6.0
