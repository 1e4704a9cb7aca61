"""``examples/distributed.py`` under ``torchrun`` with two CPU processes, and in one process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _distributed import LOOPBACK_ENV, free_port

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8


def _last_losses(output: str) -> list[float]:
    line = next(line for line in output.splitlines() if f"after step {STEPS}:" in line)
    return [float(value) for value in line.split(":")[1].split()]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("mode", ["multi-task", "jacobian", "gramian"])
def test_two_processes_match_one_process(capsys: pytest.CaptureFixture[str], mode: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env["OMP_NUM_THREADS"] = "1"
    env.update(LOOPBACK_ENV)  # gloo on the loopback interface only
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",  # the torchrun launcher
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(ROOT / "examples" / "distributed.py"),
        "--steps",
        str(STEPS),
        "--mode",
        mode,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"mode: {mode}, processes: 2, full batch: 64" in result.stdout
    assert "identical parameters on every rank: True" in result.stdout

    spec = importlib.util.spec_from_file_location(
        "jdoptim_example_distributed", ROOT / "examples" / "distributed.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    single = example.main(["--steps", str(STEPS), "--mode", mode])  # one process
    assert f"mode: {mode}, processes: 1, full batch: 64" in capsys.readouterr().out
    assert single["identical"] is True
    # Half of the batch on each process gives the steps of one process holding all of it.
    assert _last_losses(result.stdout) == pytest.approx(single["history"][-1], rel=1e-4)
    first, last = single["history"][0], single["history"][-1]
    assert last[0] < first[0] and last[1] < first[1]
