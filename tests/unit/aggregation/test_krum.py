"""Krum and KrumWeighting: Byzantine-robust selection of rows."""

from __future__ import annotations

import pytest
import torch

from jdoptim.aggregation import Krum, KrumWeighting

# Three close rows and one outlier.
WITH_OUTLIER = torch.tensor([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [30.0, -30.0]])


def test_selects_a_row_other_than_the_outlier() -> None:
    weights = KrumWeighting(n_byzantine=1)(WITH_OUTLIER @ WITH_OUTLIER.T)

    assert weights.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_multi_krum_averages_the_rows_other_than_the_outlier() -> None:
    output = Krum(n_byzantine=1, n_selected=3)(WITH_OUTLIER)

    torch.testing.assert_close(output, torch.tensor([4.0 / 3.0, 4.0 / 3.0]))


def test_scores_by_hand() -> None:
    # Squared distances between the scalars 0, 1, 3 and 10:
    #   row 0: 1, 9, 100   row 1: 1, 4, 81   row 2: 9, 4, 49   row 3: 100, 81, 49.
    matrix = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    # f = 0 sums the m - 2 = 2 smallest: scores 10, 5, 13, 130 -> row 1.
    assert Krum(n_byzantine=0)(matrix).tolist() == [1.0]
    # f = 1 keeps only the nearest neighbour: scores 1, 1, 4, 49 -> rows 0 and 1 (ties: index).
    assert KrumWeighting(n_byzantine=1)(matrix @ matrix.T).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert Krum(n_byzantine=1, n_selected=2)(matrix).tolist() == [0.5]


def test_float64_and_bfloat16_inputs() -> None:
    assert Krum(1)(WITH_OUTLIER.double()).dtype == torch.float64
    assert Krum(1)(WITH_OUTLIER.bfloat16()).tolist() == [1.0, 1.0]


def test_too_few_rows_for_n_byzantine_names_the_parameter_and_shape() -> None:
    with pytest.raises(ValueError, match=r"`n_byzantine`.*m = 4.*\[4, 4\]"):
        Krum(n_byzantine=2)(WITH_OUTLIER)


def test_too_few_rows_for_n_selected_names_the_parameter_and_shape() -> None:
    with pytest.raises(ValueError, match=r"`n_selected`.*m = 4.*\[4, 4\]"):
        KrumWeighting(n_byzantine=0, n_selected=5)(torch.eye(4))


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"n_byzantine": -1}, ValueError, "n_byzantine"),
        ({"n_byzantine": 1.0}, TypeError, "n_byzantine"),
        ({"n_byzantine": True}, TypeError, "n_byzantine"),
        ({"n_byzantine": 0, "n_selected": 0}, ValueError, "n_selected"),
        ({"n_byzantine": 0, "n_selected": 2.0}, TypeError, "n_selected"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], error: type, name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        Krum(**kwargs)  # type: ignore[arg-type]


def test_repr_and_str() -> None:
    aggregator = Krum(n_byzantine=1, n_selected=2)

    assert repr(aggregator) == "Krum(n_byzantine=1, n_selected=2)"
    assert str(aggregator) == "Krum"
    assert repr(aggregator.gramian_weighting) == "KrumWeighting(n_byzantine=1, n_selected=2)"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_row_is_not_silently_left_out(value: float) -> None:
    matrix = WITH_OUTLIER.clone()
    matrix[3, 0] = value

    assert KrumWeighting(n_byzantine=1)(matrix @ matrix.T).isnan().all()
    assert Krum(n_byzantine=1)(matrix).isnan().all()
