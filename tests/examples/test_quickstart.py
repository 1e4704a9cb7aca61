"""The README's quickstart, ``examples/quickstart.py``, runs small and prints both runs."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def test_quickstart_trains_both_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("jdoptim_example_quickstart", QUICKSTART)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    history = module.main(["--steps", "20", "--samples", "64", "--hidden", "16"])

    output = capsys.readouterr().out
    assert output.splitlines()[0].split() == [
        "step",
        "|",
        "UPGrad",
        "task",
        "1",
        "task",
        "2",
        "|",
        "sum",
        "task",
        "1",
        "task",
        "2",
    ]
    printed_steps = [int(line.split()[0]) for line in output.splitlines()[1:-3]]
    assert printed_steps == [1, 4, 8, 12, 16, 20]
    rose = re.fullmatch(
        r"steps that raised the loss: UPGrad task 1 (\d+), task 2 (\d+) "
        r"\| sum task 1 (\d+), task 2 (\d+)",
        output.splitlines()[-3],
    )
    assert rose is not None
    upgrad_rose = module.steps_that_raised(history["JacobianOptimizer(UPGrad)"])
    summed_rose = module.steps_that_raised(history["summed loss"])
    assert [int(n) for n in rose.groups()] == [*upgrad_rose, *summed_rose]
    assert module.steps_that_raised([(1.0, 2.0), (0.5, 3.0), (0.7, 1.0)]) == (1, 1)
    conflicts = re.fullmatch(
        r"steps with conflicting task gradients: (\d+) of 20", output.splitlines()[-2]
    )
    assert conflicts is not None and 0 <= int(conflicts.group(1)) <= 20
    weights = re.fullmatch(r"last UPGrad weights: \[(.*), (.*)\]", output.splitlines()[-1])
    assert weights is not None and all(float(w) > 0 for w in weights.groups())

    assert set(history) == {"JacobianOptimizer(UPGrad)", "summed loss"}
    for runs in history.values():
        assert len(runs) == 20
        (first1, first2), (last1, last2) = runs[0], runs[-1]
        assert last1 < first1 and last2 < first2
    # Both runs start from the same initialisation.
    assert history["JacobianOptimizer(UPGrad)"][0] == history["summed loss"][0]
