"""Smoke test of the scalarizer workload of ``benchmarks/run.py``: every configuration builds and
steps, without timing anything."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run as module
    finally:
        sys.path.pop(0)
    return module


def test_every_configuration_steps(run: ModuleType) -> None:
    (workload,) = run.scalarizer_workloads(quick=True)
    assert workload.name == "scalarizer MLP m=2"
    assert workload.baseline == "summed"
    assert list(workload.configurations) == ["summed", "Mean", "Random", "UW", "DWA", "FAMO"]
    assert workload.targets["FAMO"] == "≤ 2.1" and workload.targets["UW"] == "≤ 1.05"
    for setup in workload.configurations.values():
        step = setup()
        step()
        step()


def test_the_full_run_covers_2_8_and_32_losses(run: ModuleType) -> None:
    names = [workload.name for workload in run.scalarizer_workloads(quick=False)]
    assert names == ["scalarizer MLP m=2", "scalarizer MLP m=8", "scalarizer MLP m=32"]
    assert "scalarizer" in run.WORKLOAD_GROUPS
