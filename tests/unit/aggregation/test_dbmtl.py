"""DB-MTL: values by hand, the average over calls, the memoryless weighting, the losses."""

from __future__ import annotations

import pytest
import torch

from jdoptim.aggregation import DBMTL, DBMTLWeighting, GramianWeightedAggregator

MATRIX = torch.tensor([[3.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
LOSSES = torch.tensor([2.0, 0.5], dtype=torch.float64)


def test_memoryless_by_hand() -> None:
    # ĝ = (1.5, 0.5), (0, 2) (up to the 1e-8); ‖ĝ‖ = (√2.5, 2); a = (2/√2.5, 1).
    scaled = MATRIX / (LOSSES + 1e-8).unsqueeze(1)
    norms = scaled.norm(dim=1)
    expected = (norms.max() / (norms + 1e-8)) @ scaled
    torch.testing.assert_close(DBMTL(beta=0.0)(MATRIX, losses=LOSSES), expected)
    torch.testing.assert_close(expected, torch.tensor([1.8974, 2.6325]).double(), atol=1e-4, rtol=0)


def test_weighting_is_the_memoryless_case() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        matrix = torch.randn(4, 6, generator=generator, dtype=torch.float64)
        losses = torch.rand(4, generator=generator, dtype=torch.float64)
        expected = DBMTL(beta=0.0)(matrix, losses=losses)
        aggregator = GramianWeightedAggregator(DBMTLWeighting())
        torch.testing.assert_close(aggregator(matrix, losses=losses), expected)


def test_average_over_calls_by_hand() -> None:
    aggregator = DBMTL(beta=0.5, beta_sigma=1.0)
    second = torch.tensor([[1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    aggregator(MATRIX, losses=LOSSES)
    output = aggregator(second, losses=torch.ones(2, dtype=torch.float64))
    # β₁ = 0.5, β₂ = 0.25: B = 0.75·Ĵ₂ + 0.25·(0.5·Ĵ₁).
    first_scaled = MATRIX / (LOSSES + 1e-8).unsqueeze(1)
    average = 0.75 * second / (1 + 1e-8) + 0.25 * 0.5 * first_scaled
    torch.testing.assert_close(aggregator.average, average)
    norms = average.norm(dim=1)
    torch.testing.assert_close(output, (norms.max() / (norms + 1e-8)) @ average)
    assert int(aggregator.step) == 2


def test_every_averaged_row_is_scaled_to_the_largest_norm() -> None:
    aggregator = DBMTL(beta=0.0)
    matrix = torch.tensor([[1.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    output = aggregator(matrix, losses=torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(output, torch.tensor([10.0, 10.0], dtype=torch.float64))


def test_negative_losses_are_refused() -> None:
    with pytest.raises(ValueError, match="`losses` must be non-negative"):
        DBMTL()(MATRIX, losses=torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="`losses` must be non-negative"):
        DBMTLWeighting()(MATRIX @ MATRIX.T, losses=torch.tensor([1.0, -0.5]))


def test_missing_losses() -> None:
    assert DBMTL.requires_losses and DBMTLWeighting.requires_losses
    with pytest.raises(TypeError, match="`losses`"):
        DBMTL()(MATRIX)


def test_zero_matrix_and_single_row() -> None:
    assert torch.equal(DBMTL()(torch.zeros(2, 3), losses=torch.ones(2)), torch.zeros(3))
    row = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    output = DBMTL(beta=0.0)(row, losses=torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(output, row[0] / (1 + 1e-8))


def test_repr() -> None:
    assert repr(DBMTL()) == "DBMTL(beta=0.9, beta_sigma=0.0)"
    assert repr(DBMTLWeighting()) == "DBMTLWeighting()"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"beta": 1.0}, ValueError, "beta"),
        ({"beta": -0.1}, ValueError, "beta"),
        ({"beta_sigma": -1.0}, ValueError, "beta_sigma"),
        ({"beta_sigma": "0"}, TypeError, "beta_sigma"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        DBMTL(**kwargs)  # type: ignore[arg-type]
