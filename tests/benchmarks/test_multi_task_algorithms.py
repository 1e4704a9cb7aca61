"""The multi-task benchmark's configurations compute the same update (no timing asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from multi_task_algorithms import CONFIGURATIONS, main, make_step


def test_the_two_algorithms_and_the_optimizer_give_the_same_gradients() -> None:
    m = 3
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 64, generator=generator), torch.randn(8, m, generator=generator)
    grads = {}
    for configuration in CONFIGURATIONS[1:]:
        step, model = make_step(configuration, m, x, y)
        step()
        grads[configuration] = [p.grad.clone() for p in model.parameters()]
    reference = grads["per-task loop"]
    for configuration, values in grads.items():
        for a, b in zip(reference, values, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=configuration)


def test_main_prints_one_row_per_m(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--m", "2", "--repeats", "1", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].lstrip().startswith("2 |")
