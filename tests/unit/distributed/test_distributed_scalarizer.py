"""Scalarizer mode over two gloo ranks: the losses are averaged before the scalarizer sees them, so
every rank's scalarizer state stays identical, and the step is that of one process holding the
whole batch.

One spawn runs every scenario (`_all_scenarios`); the tests compare its results with
single-process runs made here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.distributed as dist
from _distributed import run_on_two_ranks
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jdoptim import JacobianOptimizer
from jdoptim.scalarization import DWA, FAMO, UW, Mean, Random, Scalarizer

STEPS = 4
BATCH = 8  # the full batch; each of the two ranks holds half of it

SCALARIZERS: dict[str, Callable[[], Scalarizer]] = {
    "Mean": Mean,
    "UW": lambda: UW(3),
    "DWA": DWA,
    "FAMO": lambda: FAMO(3),
}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _batch(step: int, rank: int | None) -> tuple[Tensor, Tensor]:
    """The batch of `step`: all of it for `rank=None`, else the rank's half."""
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(BATCH, 3, generator=generator, dtype=torch.float64)
    if rank is None:
        return x, y
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    return x[half], y[half]


def _flat(tensors: Any) -> Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


@contextmanager
def _counting(counts: list[int]) -> Iterator[None]:
    """Counts the calls of `torch.distributed.all_reduce` made in the body."""
    original = dist.all_reduce

    def counted(*args: Any, **kwargs: Any) -> Any:
        counts.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counted  # type: ignore[assignment]
    try:
        yield
    finally:
        dist.all_reduce = original


def _train(rank: int | None, name: str, wrap: str = "none") -> dict[str, Tensor]:
    """4 steps in scalarizer mode (rank None: one process). FAMO steps with a closure (so that
    the wrapper re-evaluates and updates it), DWA ends an epoch every 2 steps. `wrap`: "none",
    "ddp" (a DDP wrapper and `process_group`), "ddp_without_group" (plain DDP: its hooks average
    the gradients, each rank's scalarizer sees its own losses)."""
    model = _mlp()
    forward = DistributedDataParallel(model) if wrap.startswith("ddp") else model
    scalarizer = SCALARIZERS[name]().double()
    opt = JacobianOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.05),
        scalarizer=scalarizer,
        process_group=None if rank is None or wrap == "ddp_without_group" else dist.group.WORLD,
    )
    reductions = []
    for step in range(STEPS):
        x, y = _batch(step, rank)

        def closure() -> Tensor:
            opt.zero_grad()
            return (forward(x) - y).pow(2).mean(dim=0)  # one mean-reduced loss per output

        counts: list[int] = []
        with _counting(counts):
            opt.step(closure)
        reductions.append(len(counts))
        if isinstance(scalarizer, DWA) and step % 2 == 1:
            scalarizer.step()
    state = [t for t in scalarizer.state_dict().values() if isinstance(t, Tensor)]
    return {
        "params": _flat(model.parameters()),
        "scalarizer": _flat(state) if state else torch.zeros(0),
        "extra": _flat(_tensors(scalarizer.state_dict().get("_extra_state"))),
        "all_reduce_per_step": torch.tensor(reductions),
    }


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list):
        return [t for v in value for t in _tensors(v)]
    return [torch.zeros(0)]


def _train_random(rank: int) -> dict[str, Tensor]:
    """Random with a rank-dependent global generator: the ranks still draw the same weights."""
    model = _mlp()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        scalarizer=Random(),
        process_group=dist.group.WORLD,
    )
    torch.manual_seed(1000 + rank)
    global_state = torch.get_rng_state()
    for step in range(STEPS):
        x, y = _batch(step, rank)
        opt.zero_grad()
        opt.step((model(x) - y).pow(2).mean(dim=0))
    return {
        "params": _flat(model.parameters()),
        "global_rng_untouched": torch.tensor(torch.equal(torch.get_rng_state(), global_state)),
    }


def _all_scenarios(rank: int) -> dict[str, dict[str, Tensor]]:
    torch.manual_seed(rank)
    results = {name: _train(rank, name) for name in SCALARIZERS}
    results["UW/ddp"] = _train(rank, "UW", "ddp")
    for name in ("Mean", "UW"):
        results[f"{name}/ddp_without_group"] = _train(rank, name, "ddp_without_group")
    results["Random"] = _train_random(rank)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, Tensor]]]:
    return run_on_two_ranks(_all_scenarios, tmp_path_factory.mktemp("ranks"))


@pytest.mark.timeout(200)
@pytest.mark.parametrize("scenario", [*SCALARIZERS, "UW/ddp"])
def test_scalarizer_mode_equals_the_full_batch_step(
    ranks: list[dict[str, dict[str, Tensor]]], scenario: str
) -> None:
    expected = _train(None, scenario.split("/")[0])
    rank0, rank1 = (result[scenario] for result in ranks)
    for key in ("params", "scalarizer", "extra"):
        torch.testing.assert_close(rank0[key], expected[key], rtol=0, atol=1e-6)
        assert torch.equal(rank0[key], rank1[key])  # the ranks never drift apart
    # One all-reduce of the losses and one of the gradients; FAMO's re-evaluated losses too.
    per_step = 3 if scenario == "FAMO" else 2
    for result in (rank0, rank1):
        assert result["all_reduce_per_step"].tolist() == [per_step] * STEPS
    assert expected["all_reduce_per_step"].tolist() == [0] * STEPS


@pytest.mark.timeout(200)
def test_plain_ddp_averages_the_gradients_of_rank_local_scalarizers(
    ranks: list[dict[str, dict[str, Tensor]]],
) -> None:
    # Mean's weights do not depend on the losses: plain DDP gives the full-batch step.
    expected = _train(None, "Mean")
    rank0, rank1 = (result["Mean/ddp_without_group"] for result in ranks)
    torch.testing.assert_close(rank0["params"], expected["params"], rtol=0, atol=1e-6)
    assert torch.equal(rank0["params"], rank1["params"])
    # UW: DDP's hooks average the model's gradients, but each rank's log-variances learn from
    # its own losses, so they differ between the ranks.
    rank0, rank1 = (result["UW/ddp_without_group"] for result in ranks)
    assert not torch.equal(rank0["scalarizer"], rank1["scalarizer"])
    for result in (rank0, rank1):
        assert result["all_reduce_per_step"].tolist() == [0] * STEPS  # only DDP's own buckets


@pytest.mark.timeout(200)
def test_random_draws_the_same_weights_on_every_rank(
    ranks: list[dict[str, dict[str, Tensor]]],
) -> None:
    rank0, rank1 = (result["Random"] for result in ranks)
    assert torch.equal(rank0["params"], rank1["params"])
    assert not torch.equal(rank0["params"], _flat(_mlp().parameters()))  # it trained
    for result in (rank0, rank1):
        assert result["global_rng_untouched"].item()
