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


def test_methods_batched_together_follow_their_own_trajectories() -> None:
    """Methods run side by side in one batched run (random ones, stateful ones, scalarizers
    with their own parameters) give each the trajectory it has alone."""
    table = {**aggregators(2), **scalarizers(2)}
    names = ["Random", "UPGrad", "GradDrop", "s:Random", "s:UW", "s:FAMO", "MoCo", "s:DWA"]
    specs = [(name, lambda name=name: table[name](2)) for name in names]
    together = toy.run_many(specs, 30, 0.05)
    for (name, factory), batched in zip(specs, together, strict=True):
        alone = toy.run_batched(name, factory, 30, 0.05)
        assert batched.name == name
        assert torch.equal(batched.trajectory, alone.trajectory), name
        assert batched.conflicting_updates == alone.conflicting_updates, name
        assert batched.both_rose == alone.both_rose, name


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


def test_conflict_variant_targets_disagree_on_every_digit_but_nine() -> None:
    first, second = multidigits.conflict_targets(torch.arange(10))
    assert first.tolist() == [0.0] * 5 + [1.0] * 5
    assert (first == second).tolist() == [False] * 9 + [True]


def test_conflict_variant_gradients_oppose_on_the_shared_output() -> None:
    """Where the targets disagree, the two losses' gradients with respect to the shared logit
    have opposite signs whatever the logit: no head can serve both tasks."""
    logit = torch.linspace(-6.0, 6.0, 41).repeat_interleave(10).requires_grad_(True)
    digits = torch.arange(10).repeat(41)
    first, second = multidigits.conflict_targets(digits)
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    (g1,) = torch.autograd.grad(loss(logit, first, reduction="sum"), logit)
    (g2,) = torch.autograd.grad(loss(logit, second, reduction="sum"), logit)
    disagree = first != second
    assert (g1[disagree] * g2[disagree] < 0).all()
    assert torch.equal(g1[~disagree], g2[~disagree])


def test_toy_groups_cover_every_method_once() -> None:
    names = list({**aggregators(2), **scalarizers(2)})
    groups = run._groups(names, 3)
    assert sorted(name for group in groups for name in group) == sorted(names)
    slow = [sum(name in run.SLOW for name in group) for group in groups]
    assert max(slow) - min(slow) <= 1


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
        for key in ("mean_cosine", "late_cosine", "feature_cosine"):
            assert -1.0 <= methods["Mean"][key] <= 1.0, (variant, key)
        assert 0.0 <= methods["Mean"]["negative_cosine_share"] <= 1.0
    # The conflict variant's tasks pull the trunk's parameters apart: over seeds 0-4 of this
    # quick setting the mean cosine is -0.57 to -0.84 (Mean and UPGrad), the plain task's ~0.
    conflict = digits["conflict"]["Mean"]
    assert conflict["mean_cosine"] < -0.3
    assert conflict["negative_cosine_share"] >= 0.5
