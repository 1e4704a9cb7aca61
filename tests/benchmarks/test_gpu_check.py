"""Tests of ``benchmarks/gpu_check.sh`` and ``gpu_check.py`` without a GPU (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_it_skips_and_succeeds(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "table.md")],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "no CUDA device here; skipped" in result.stdout
    assert not (tmp_path / "table.md").exists()


@pytest.mark.slow
def test_the_dry_run_reports_every_row(tmp_path: Path) -> None:
    output = tmp_path / "table.md"
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(output)],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split(" | ")[:2] for line in output.read_text().splitlines()[4:]]
    workloads = [(cells[0].lstrip("| "), cells[1]) for cells in rows]
    assert workloads[:2] == [
        ("UPGradWeighting m=4", "torch solver on cpu"),
        ("UPGradWeighting m=8", "torch solver on cpu"),
    ]
    assert workloads[2:6] == [
        ("IWRM CNN batch=4", c) for c in ("summed", "autogram", "autojac", "autojac_loop")
    ]
    assert workloads[6][0] == "feature-level multi-task m=8"
    assert workloads[7] == ("torch.compile MLP m=8", "JacobianOptimizer, aot_eager")
    assert "failed" not in output.read_text()
    # The compiled steps give the eager parameters.
    difference = float(output.read_text().split("largest parameter difference ")[1].split(" ")[0])
    assert difference < 1e-5
