"""Smoke test of the performance suite: ``benchmarks/run.py --quick`` runs and reports every row.

No timing is asserted: the figures depend on the machine; only the table's shape is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXPECTED_ROWS = [
    ("aggregation m=2 n=1e+04", "J Jᵀ"),
    ("aggregation m=2 n=1e+04", "UPGrad(solver=torch)"),
    ("aggregation m=8 n=1e+05", "UPGrad(solver=quadprog)"),
    ("aggregation m=8 n=1e+05", "Mean"),
    ("methods m=2 n=1e+04", "FairGrad"),
    ("methods m=2 n=1e+04", "PCD"),
    ("UPGradWeighting m=64", "torch"),
    ("UPGradWeighting m=64", "quadprog"),
    ("UPGradWeighting m=128", "torch"),
    ("UPGradWeighting m=64 n=32", "auto"),
    ("MLP 4×512 m=2 batch=64", "summed"),
    ("MLP 4×512 m=2 batch=64", "naive loop"),
    ("MLP 4×512 m=2 batch=64", "backward+jac_to_grad"),
    ("MLP 4×512 m=2 batch=64", "mtl_backward+jac_to_grad"),
    ("MLP 4×512 m=2 batch=64", "feature-level"),
    ("IWRM CNN batch=16", "summed"),
    ("IWRM CNN batch=16", "autogram"),
    ("IWRM CNN batch=16", "autojac"),
    ("IWRM CNN batch=16", "autojac_vmap"),
    ("IWRM CNN batch=16", "autojac_loop"),
    ("IWRM transformer encoder batch=32", "summed"),
    ("IWRM transformer encoder batch=32", "autogram"),
    ("IWRM transformer causal_lm batch=16", "summed"),
    ("IWRM transformer causal_lm batch=16", "autogram"),
    ("IWRM transformer causal_lm_tied batch=16", "summed"),
    ("IWRM transformer causal_lm_tied batch=16", "autogram"),
    ("JacobianOptimizer MLP m=2", "hand-written"),
    ("JacobianOptimizer MLP m=2", "JacobianOptimizer"),
    ("JacobianOptimizer MLP m=2", "summed"),
    ("scalarizer MLP m=2", "summed"),
    ("scalarizer MLP m=2", "Mean"),
    ("scalarizer MLP m=2", "Random"),
    ("scalarizer MLP m=2", "UW"),
    ("scalarizer MLP m=2", "DWA"),
    ("scalarizer MLP m=2", "FAMO"),
]


@pytest.mark.slow
@pytest.mark.timeout(290)
def test_quick_run_reports_every_workload(tmp_path: Path) -> None:
    output = tmp_path / "rows.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }

    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert "workload" in completed.stdout and "ratio" in completed.stdout
    rows = {(row["workload"], row["configuration"]): row for row in json.loads(output.read_text())}
    for key in EXPECTED_ROWS:
        assert key in rows, key
        assert rows[key]["status"] == "ok", rows[key]
        assert rows[key]["wall_ms"] > 0.0
    # Peak memory is measured in subprocesses for the IWRM workload, even in quick mode.
    assert rows[("IWRM CNN batch=16", "autogram")]["peak_mib"] >= 0.0
    for key in EXPECTED_ROWS[:4]:
        assert rows[key]["ratio"] == pytest.approx(
            rows[key]["wall_ms"] / rows[(key[0], "J Jᵀ")]["wall_ms"]
        )


def test_unavailable_workload_is_reported_not_raised(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run
    finally:
        sys.path.pop(0)

    def missing() -> object:
        raise ModuleNotFoundError("No module named 'jdoptim.future'", name="jdoptim.future")

    workload = run.Workload(
        name="future",
        baseline="base",
        configurations={"base": lambda: lambda: None, "new": missing},
    )

    results = run.time_workload(workload)

    assert results["base"].status == "ok"
    assert results["new"].status == "unavailable (jdoptim.future)"
