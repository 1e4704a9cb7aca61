"""The script that renders the documentation's figures still runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "make_figures.py"


def test_make_figures_renders_the_aggregator_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("jdoptim_docs_make_figures", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    argv = ["--only", "upgrad", "--only", "aggregators", "--output-dir", str(tmp_path)]
    written = module.main(argv)

    assert [path.name for path in written] == ["upgrad_projection.png", "aggregators.png"]
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG")
