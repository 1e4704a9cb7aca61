"""The visual check of the aggregators renders (matplotlib, extra ``plot``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from plot_aggregators import SCENARIOS, aggregators, plot_aggregators

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_aggregators_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = plot_aggregators(tmp_path / "aggregators.png")
    assert path == tmp_path / "aggregators.png"
    content = path.read_bytes()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > 10_000


def test_plot_covers_every_aggregator_on_two_row_jacobians() -> None:
    labels = [label.split("(")[0].split(" ")[0] for label, _ in aggregators()]
    assert len(set(labels)) == 22
    assert all(jacobian.shape == (2, 2) for _, jacobian in SCENARIOS)
