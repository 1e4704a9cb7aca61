"""``examples/transformer_iwrm.py`` runs, small, and both modes learn."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transformer_iwrm.py"


def test_transformer_iwrm(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("jdoptim_example_transformer_iwrm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # As many sequences as tokens: the position embedding must not pass for batched.
        results = module.main(["--steps", "8", "--batch", "4", "--length", "4"])
    finally:
        torch.set_num_threads(threads)
    output = capsys.readouterr().out
    assert "summed" in output and "upgrad" in output
    for history in results.values():
        assert len(history) == 8
        assert history[-1] < history[0]
