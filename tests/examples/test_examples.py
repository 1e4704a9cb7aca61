"""Every example of ``examples/`` runs, small, and does what its docs page says."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """Imports ``examples/<name>.py`` as a module without running its ``__main__`` block."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"jdoptim_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_example(name: str, *argv: str) -> Any:
    return load_example(name).main(list(argv))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The examples' matrices are tiny: one thread avoids the cost of synchronising two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_basic_usage(capsys: pytest.CaptureFixture[str]) -> None:
    history = run_example("basic_usage", "--steps", "20")
    output = capsys.readouterr().out
    assert "Jacobian of the first weight: shape [2, 16, 10]" in output
    assert len(history) == 20
    (first1, first2), (last1, last2) = history[0], history[-1]
    assert last1 < first1 and last2 < first2


def test_multi_task_learning(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_example("multi_task_learning", "--steps", "20")
    output = capsys.readouterr().out
    assert "mtl_backward + jac_to_grad" in output and "JacobianOptimizer" in output
    low_level, wrapped = results["mtl_backward + jac_to_grad"], results["JacobianOptimizer"]
    for first, last in (low_level, wrapped):
        assert last[0] < first[0] and last[1] < first[1]
    # The wrapper does exactly what the low-level calls do.
    assert wrapped[1] == pytest.approx(low_level[1], rel=1e-5)


def test_iwrm(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_example("iwrm", "--epochs", "3", "--batch-size", "64")
    output = capsys.readouterr().out
    assert "autojac" in output and "autogram" in output
    for first, last in results.values():
        assert last < first
    # Both variants compute the same update, so they follow the same trajectory.
    assert results["autogram"][1] == pytest.approx(results["autojac"][1], rel=1e-3)


def test_partial_jd(capsys: pytest.CaptureFixture[str]) -> None:
    first, last = run_example("partial_jd", "--epochs", "4", "--batch-size", "64")
    output = capsys.readouterr().out
    assert "training accuracy" in output
    assert last < first
    accuracy = float(output.split("training accuracy")[1].split()[0])
    assert accuracy > 0.6  # two balanced classes: chance is 0.5


def test_instance_wise_mtl(capsys: pytest.CaptureFixture[str]) -> None:
    first, last = run_example("instance_wise_mtl", "--epochs", "4", "--batch-size", "32")
    output = capsys.readouterr().out
    assert "generalized Gramian shape of the last batch: [32, 2, 2, 32]" in output
    assert last[0] < first[0] and last[1] < first[1]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision(capsys: pytest.CaptureFixture[str], dtype: str) -> None:
    results = run_example("mixed_precision", "--steps", "30", "--dtype", dtype, "--device", "cpu")
    output = capsys.readouterr().out
    assert f"({dtype} on cpu)" in output
    for history in results.values():
        assert all(math.isfinite(loss) for losses in history for loss in losses)
        assert history[-1][0] < history[0][0] and history[-1][1] < history[0][1]


def test_rnn(capsys: pytest.CaptureFixture[str]) -> None:
    first, last = run_example("rnn", "--steps", "12")
    output = capsys.readouterr().out
    assert "step   12" in output
    assert last[0] < first[0] and last[1] < first[1]


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # inside lightning
def test_lightning_training(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lightning")
    epoch_losses = run_example("lightning_training", "--epochs", "4")
    output = capsys.readouterr().out
    assert "epoch 4: task 1 loss" in output
    assert len(epoch_losses) == 4
    assert epoch_losses[-1][0] < epoch_losses[0][0] and epoch_losses[-1][1] < epoch_losses[0][1]


def test_monitoring(capsys: pytest.CaptureFixture[str]) -> None:
    records = run_example("monitoring", "--steps", "10")
    output = capsys.readouterr().out
    assert len(records) == 10  # the hook fired once per step
    assert "conflicting pairs" in output and "last weights from the optimizer" in output
    assert "conflicting pairs from the optimizer: " in output
    for record in records:
        assert len(record["weights"]) == 3
        cosine = record["cosine"]
        assert cosine.shape == (3, 3)
        assert cosine.diagonal().tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    # Tasks 1 and 2 pull the shared output in opposite directions.
    assert records[0]["cosine"][0, 1] < 0 and records[0]["conflicts"] >= 1


def test_param_groups(capsys: pytest.CaptureFixture[str]) -> None:
    first, last = run_example("param_groups", "--steps", "30")
    output = capsys.readouterr().out
    assert "group with UPGrad" in output and "group with Mean  : last weights [0.5, 0.5]" in output
    assert last[0] < first[0] and last[1] < first[1]


def test_checkpoint_resume(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    assert run_example("checkpoint_resume", "--steps", "5", "--path", str(checkpoint))
    assert checkpoint.exists()
    assert "parameters identical to the uninterrupted run: True" in capsys.readouterr().out


def test_digits(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sklearn")
    results = run_example("digits", "--epochs", "2")
    output = capsys.readouterr().out
    assert "1437 training and 360 test images" in output
    assert set(results) == {"Mean", "UPGrad"}
    for accuracies, conflicting_fraction in results.values():
        assert 0.0 <= conflicting_fraction <= 1.0
        digit, parity, at_least_five = accuracies
        # Chance levels: 0.1 for the digit, about 0.5 for the two binary tasks.
        assert digit > 0.5 and parity > 0.6 and at_least_five > 0.6


def test_gradient_accumulation_equals_the_whole_batch(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_example("gradient_accumulation", "--steps", "5", "--micro-batches", "4")
    assert "4 micro-batches" in capsys.readouterr().out
    whole, accumulated = results["whole batch"], results["4 micro-batches"]
    assert accumulated == pytest.approx(whole, rel=1e-4)


def test_loss_weighting(capsys: pytest.CaptureFixture[str]) -> None:
    histories = run_example("loss_weighting", "--steps", "30")
    output = capsys.readouterr().out
    assert "final / initial loss of each task" in output and "UW log-variances" in output
    assert list(histories) == ["UPGrad", "FAMO", "UW"]
    for history in histories.values():
        assert len(history) == 31 and all(len(losses) == 3 for losses in history)
        assert all(math.isfinite(loss) for losses in history for loss in losses)
    for method in ("UPGrad", "UW"):
        first, last = histories[method][0], histories[method][-1]
        assert all(after < before for before, after in zip(first, last, strict=True))
    # FAMO descends on the sum of the log-losses, the objective its weights follow.
    first, last = histories["FAMO"][0], histories["FAMO"][-1]
    assert sum(math.log(loss) for loss in last) < sum(math.log(loss) for loss in first)
