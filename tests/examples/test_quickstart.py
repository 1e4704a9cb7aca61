"""The README's quickstart, ``examples/quickstart.py``, runs small and prints the four runs."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def load_quickstart():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("jdoptim_example_quickstart", QUICKSTART)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quickstart_prints_each_method(capsys: pytest.CaptureFixture[str]) -> None:
    module = load_quickstart()
    results = module.main(["--steps", "8", "--pairs", "200"])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["method", "left", "digit", "right", "digit", "(test", "accuracy)"]
    assert list(results) == list(module.METHODS)
    for line, (method, accuracies) in zip(lines[1:], results.items()):
        match = re.fullmatch(r"(.+?)\s+(\d+\.\d)%\s+(\d+\.\d)%", line)
        assert match is not None and match.group(1) == method
        assert [float(match.group(2)), float(match.group(3))] == [
            round(100 * a, 1) for a in accuracies
        ]
        assert all(0.0 <= a <= 1.0 for a in accuracies)


def test_quickstart_data_and_losses() -> None:
    module = load_quickstart()
    train_x, train_y, test_x, _ = module.make_data(40)
    assert train_x.shape == (40, 144) and test_x.shape == (20, 144)
    assert train_y.shape == (40, 2) and int(train_y.max()) <= 9
    torch.manual_seed(0)
    _, losses = module.Model(100.0).losses(train_x, train_y)
    assert len(losses) == 3
    # The regression loss is orders of magnitude above the classification losses.
    assert float(losses[2]) > 1000 * max(float(losses[0]), float(losses[1]))
    _, plain = module.Model(0.0).losses(train_x, train_y)
    assert len(plain) == 2


def test_without_the_regression_every_method_is_the_summed_loss_at_step_zero() -> None:
    """With zero steps every method leaves the same initialisation (same accuracies)."""
    module = load_quickstart()
    data = module.make_data(100)
    first = [module.train(method, data, 0, 0.0) for method in module.METHODS]
    assert all(accuracies == first[0] for accuracies in first)
