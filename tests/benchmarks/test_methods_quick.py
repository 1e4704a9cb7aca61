"""The methods benchmark (``python -m benchmarks.methods``): its drivers are the library's
computation, and its ``--quick`` run keeps the invariants that hold whenever the library is right.

Accuracies and times are reported by the benchmark, never asserted here beyond sanity bounds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.methods import multidigits, run, toy
from benchmarks.methods._registry import FAMILIES, aggregators, scalarizers

#: Aggregators whose update provably has a non-negative inner product with every gradient
#: (UPGrad exactly so only with ``reg_eps=0``: its default regularisation is relative to the
#: largest gradient and lets a much smaller one be contradicted, which the toy shows).
NON_CONFLICTING = ("UPGrad(reg_eps=0)", "MGDA")


@pytest.mark.parametrize("name", ["UPGrad", "MGDA", "DBMTL", "GradVac", "PCD", "Random"])
def test_batched_toy_driver_equals_the_optimizer(name: str) -> None:
    factory = aggregators(2)[name]
    difference, _ = toy.check_against_optimizer(lambda: factory(2), 15, 0.05, toy.STARTS[3])
    assert difference == 0.0


@pytest.mark.parametrize("name", ["s:Mean", "s:UW", "s:FAMO", "s:DWA", "s:GeometricMean"])
def test_batched_toy_driver_equals_scalarizer_mode(name: str) -> None:
    factory = scalarizers(2)[name]
    difference, _ = toy.check_against_optimizer(lambda: factory(2), 60, 0.05, toy.STARTS[0])
    assert difference == 0.0


def test_batched_starts_are_independent() -> None:
    """Running the five starts together gives each the trajectory it has alone."""
    factory = aggregators(2)["UPGrad"]
    together = toy.run_batched("UPGrad", lambda: factory(2), 20, 0.05).trajectory
    for k, start in enumerate(toy.STARTS):
        alone = toy.batched_iterates(lambda: factory(2), 20, 0.05, start)
        assert torch.equal(together[:, k], alone)


def test_toy_losses_and_pareto_set() -> None:
    front = toy.pareto_set(0.05)
    # The Pareto set is the bottom segment: x1 from -7 to 7, x2 near -8.
    assert front.points[:, 0].min() == pytest.approx(-7.0, abs=0.06)
    assert front.points[:, 0].max() == pytest.approx(7.0, abs=0.06)
    assert ((front.points[:, 1] > -8.6) & (front.points[:, 1] < -7.9)).all()
    # The offsets keep both losses positive on the whole square.
    axis = torch.linspace(-10.0, 10.0, 101)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)
    assert (toy.losses(grid) > 0).all()
    # The front trades one loss for the other: sorted by L1, L2 decreases.
    assert (front.values[1:, 1] < front.values[:-1, 1]).all()


def test_conflict_variant_gradients_oppose_at_a_learned_head() -> None:
    """With the shared head predicting half left, half 9 - left, the two gradients cancel."""
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]]) + 1e-9)
    logits.requires_grad_(True)
    first = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
    second = torch.nn.functional.cross_entropy(logits, torch.tensor([9]))
    (g1,) = torch.autograd.grad(first, logits)
    (g2,) = torch.autograd.grad(second, logits)
    assert float(torch.nn.functional.cosine_similarity(g1, g2)) == pytest.approx(-1.0, abs=1e-6)


def test_multidigits_data_and_variants() -> None:
    data = multidigits.make_data(50, 20)
    assert data.train_x.shape == (50, 144) and data.test_y.shape == (20, 2)
    assert 0.0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1.0
    for variant in multidigits.VARIANTS:
        model = multidigits.Model(variant)
        _, losses = model.losses(data.train_x, data.train_y)
        assert len(losses) == multidigits.n_tasks(variant) == len(multidigits.task_names(variant))
        assert len(model.accuracies(data.test_x, data.test_y)) == len(losses)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("methods")
    return run.main(["--quick", "--out", str(out)]), out


@pytest.mark.slow
def test_quick_run_writes_tables_and_figures(quick: tuple[dict[str, Any], Path]) -> None:
    results, out = quick
    for name in ("toy_parameters.png", "toy_losses.png", "toy.md", "multidigits.md"):
        assert (out / name).stat().st_size > 0
    toy_table = (out / "toy.md").read_text()
    assert set(results["toy"]["rows"]) == set(run.QUICK_TOY)
    for name in run.QUICK_TOY:
        assert f"| {name} | {FAMILIES[name]} |" in toy_table
    digits_table = (out / "multidigits.md").read_text()
    for variant in run.QUICK_VARIANTS:
        assert f"### {variant}" in digits_table


@pytest.mark.slow
def test_quick_run_invariants(quick: tuple[dict[str, Any], Path]) -> None:
    results, _ = quick
    rows = results["toy"]["rows"]
    for name, row in rows.items():
        assert row["difference_vs_optimizer"] == 0.0, name
        assert all(torch.isfinite(torch.tensor(row["final_losses"])).flatten()), name
        assert 0 <= row["reached"] <= 5
    for name in NON_CONFLICTING:
        # The aggregated update never has a negative inner product with a task's gradient,
        # so to first order no step increases either loss (let alone both).
        assert rows[name]["conflicting_updates"] == 0, name
    digits = results["digits"]["results"]
    for variant, methods in digits.items():
        for name, row in methods.items():
            for accuracies in row["accuracies"]:
                assert all(0.0 <= a <= 1.0 for a in accuracies)
            if variant == "plain":
                assert min(row["worst"]) > 0.2, name  # well above chance (0.1)
    for variant, methods in digits.items():
        for key in ("mean_cosine", "late_cosine"):
            assert -1.0 <= methods["Mean"][key] <= 1.0, (variant, key)
        assert 0.0 <= methods["Mean"]["negative_cosine_share"] <= 1.0
