"""`JacobianOptimizer` over two gloo ranks: the same steps as one process, on every rank.

Spawning the two processes costs seconds, so one spawn runs every scenario (`_all_scenarios`)
and the tests below check its results against single-process runs made here.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import pytest
import torch
import torch.distributed as dist
from _distributed import run_on_two_ranks
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import GradDrop, PCGrad, Random, UPGrad, UPGradWeighting
from jdoptim.autogram import Engine

STEPS = 4
BATCH = 8  # the full batch; each of the two ranks holds half of it


class MultiTask(nn.Module):
    """A shared trunk and two task heads; `forward` returns the features and the outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(6, 1), nn.Linear(6, 2)])

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.trunk(x)
        return features, [head(features) for head in self.heads]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _multi_task() -> nn.Module:
    torch.manual_seed(0)
    return MultiTask().double()


def _batch(step: int, rank: int | None) -> tuple[Tensor, Tensor]:
    """The batch of `step`: all of it for `rank=None`, else the rank's half."""
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(BATCH, 3, generator=generator, dtype=torch.float64)
    if rank is None:
        return x, y
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    return x[half], y[half]


def _output_losses(output: Tensor, y: Tensor) -> Tensor:
    return (output - y).pow(2).mean(dim=0)  # one mean-reduced loss per output: m = 3


def _task_losses(outputs: list[Tensor], y: Tensor) -> list[Tensor]:
    return [(outputs[0] - y[:, :1]).pow(2).mean(), (outputs[1] - y[:, 1:]).pow(2).mean()]


def _sample_losses(output: Tensor, y: Tensor) -> Tensor:
    return (output - y).pow(2).mean(dim=1)  # one loss per sample (instance-wise)


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@contextmanager
def _counting(name: str, counts: list[int]) -> Iterator[None]:
    """Counts the calls of `torch.distributed.<name>` made in the body."""
    original = getattr(dist, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        counts.append(1)
        return original(*args, **kwargs)

    setattr(dist, name, counted)
    try:
        yield
    finally:
        setattr(dist, name, original)


# -- what each rank runs -----------------------------------------------------------------------


def _train_jacobian(rank: int | None, wrap: str) -> dict[str, Tensor]:
    """Jacobian mode, 4 steps; `wrap` is one of `WRAPS` (rank None: one process)."""
    model = _mlp()
    forward, sync = _wrapped(model, wrap)
    group = None if rank is None else dist.group.WORLD
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), UPGrad(), process_group=group
    )
    reductions = []
    for step in range(STEPS):
        x, y = _batch(step, rank)
        counts: list[int] = []
        opt.zero_grad()
        with sync():
            losses = _output_losses(forward(x), y)
        with _counting("all_reduce", counts):
            opt.step(losses)
        reductions.append(len(counts))
    return {"params": _flat(model), "all_reduce_per_step": torch.tensor(reductions)}


def _train_multi_task(rank: int | None, wrap: str) -> dict[str, Tensor]:
    """Multi-task mode (`features=`), 4 steps; `wrap` in {"none", "ddp"}."""
    model = _multi_task()
    forward, _ = _wrapped(model, wrap)
    group = None if rank is None else dist.group.WORLD
    opt = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), process_group=group)
    reductions = []
    for step in range(STEPS):
        x, y = _batch(step, rank)
        counts: list[int] = []
        opt.zero_grad()
        features, outputs = forward(x)
        with _counting("all_reduce", counts):
            opt.step(_task_losses(outputs, y), features=features)
        reductions.append(len(counts))
    return {"params": _flat(model), "all_reduce_per_step": torch.tensor(reductions)}


# How the model is wrapped: not at all, in DDP with its options, or in DDP with the forward pass
# under `no_sync()` (and `find_unused_parameters=True`).
WRAPS = ("none", "ddp", "ddp_find_unused", "ddp_static_graph", "ddp_no_sync")


def _wrapped(
    model: nn.Module, wrap: str
) -> tuple[Callable[..., Any], Callable[[], AbstractContextManager[Any]]]:
    """The function to call for the forward pass, and the context to run it in."""
    if wrap == "none":
        return model, nullcontext
    ddp = DistributedDataParallel(
        model,
        find_unused_parameters=wrap in ("ddp_find_unused", "ddp_no_sync"),
        static_graph=wrap == "ddp_static_graph",
    )
    return ddp, ddp.no_sync if wrap == "ddp_no_sync" else nullcontext


def _train_randomised(rank: int, aggregator_name: str) -> dict[str, Tensor]:
    """A randomised aggregator with a rank-dependent global RNG; 4 steps, then 2 + resume + 2."""
    aggregators = {"Random": Random, "GradDrop": GradDrop, "PCGrad": PCGrad}

    def make() -> tuple[nn.Module, JacobianOptimizer]:
        model = _mlp()
        opt = JacobianOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            aggregators[aggregator_name](),
            process_group=dist.group.WORLD,
        )
        return model, opt

    def run(model: nn.Module, opt: JacobianOptimizer, steps: range) -> None:
        for step in steps:
            x, y = _batch(step, rank)
            opt.zero_grad()
            opt.step(_output_losses(model(x), y))

    broadcasts: list[int] = []
    with _counting("broadcast", broadcasts):
        model, opt = make()
        torch.manual_seed(1000 + rank)  # the ranks' global generators differ
        global_state = torch.get_rng_state()
        run(model, opt, range(STEPS))
        global_untouched = torch.equal(torch.get_rng_state(), global_state)

        first, first_opt = make()
        torch.manual_seed(1000 + rank)  # rank 0's seed seeds the shared generator
        run(first, first_opt, range(STEPS // 2))
        saved = io.BytesIO()
        torch.save({"model": first.state_dict(), "opt": first_opt.state_dict()}, saved)
        saved.seek(0)
        checkpoint = torch.load(saved, weights_only=True)
        resumed, resumed_opt = make()
        resumed.load_state_dict(checkpoint["model"])
        resumed_opt.load_state_dict(checkpoint["opt"])
        torch.manual_seed(2000 + rank)
        run(resumed, resumed_opt, range(STEPS // 2, STEPS))
    return {
        "params": _flat(model),
        "resumed": _flat(resumed),
        "global_rng_untouched": torch.tensor(global_untouched),
        # The optimizers that start from scratch seed their shared generator with one broadcast;
        # the resumed one loads it.
        "broadcasts": torch.tensor(len(broadcasts)),
    }


def _train_gramian_ddp(rank: int) -> dict[str, Tensor]:
    """Gramian mode (instance-wise losses) with a DDP-wrapped model, 4 steps."""
    model = _mlp()
    ddp = DistributedDataParallel(model)
    engine = Engine(model, batch_dim=0)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad(), engine=engine)
    for step in range(STEPS):
        x, y = _batch(step, rank)
        opt.zero_grad()
        opt.step(_sample_losses(ddp(x), y))
    return {"params": _flat(model)}


def _all_scenarios(rank: int) -> dict[str, dict[str, Tensor]]:
    torch.manual_seed(rank)
    results = {}
    for wrap in WRAPS:
        results[f"jacobian/{wrap}"] = _train_jacobian(rank, wrap)
    for wrap in ("none", "ddp"):
        results[f"multi_task/{wrap}"] = _train_multi_task(rank, wrap)
    for name in ("Random", "GradDrop", "PCGrad"):
        results[f"randomised/{name}"] = _train_randomised(rank, name)
    results["gramian/ddp"] = _train_gramian_ddp(rank)
    return results


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, Tensor]]]:
    return run_on_two_ranks(_all_scenarios, tmp_path_factory.mktemp("ranks"))


@pytest.mark.timeout(200)
@pytest.mark.parametrize("wrap", WRAPS)
def test_jacobian_mode_equals_the_full_batch_step(
    ranks: list[dict[str, dict[str, Tensor]]], wrap: str
) -> None:
    expected = _train_jacobian(None, "none")["params"]
    rank0, rank1 = (result[f"jacobian/{wrap}"] for result in ranks)
    torch.testing.assert_close(rank0["params"], expected, rtol=0, atol=1e-6)
    assert torch.equal(rank0["params"], rank1["params"])
    for result in (rank0, rank1):
        assert result["all_reduce_per_step"].tolist() == [1] * STEPS


@pytest.mark.timeout(200)
@pytest.mark.parametrize("wrap", ["none", "ddp"])
def test_multi_task_mode_equals_the_full_batch_step(
    ranks: list[dict[str, dict[str, Tensor]]], wrap: str
) -> None:
    expected = _train_multi_task(None, "none")["params"]
    rank0, rank1 = (result[f"multi_task/{wrap}"] for result in ranks)
    torch.testing.assert_close(rank0["params"], expected, rtol=0, atol=1e-6)
    assert torch.equal(rank0["params"], rank1["params"])
    # The task-specific gradients travel in the Jacobian's buffer: still one collective.
    for result in (rank0, rank1):
        assert result["all_reduce_per_step"].tolist() == [1] * STEPS


@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", ["Random", "GradDrop", "PCGrad"])
def test_randomised_aggregators_draw_the_same_numbers_on_every_rank(
    ranks: list[dict[str, dict[str, Tensor]]], name: str
) -> None:
    rank0, rank1 = (result[f"randomised/{name}"] for result in ranks)
    assert torch.equal(rank0["params"], rank1["params"])
    assert not torch.equal(rank0["params"], _mlp_params())  # it trained
    # A run resumed from a checkpoint continues exactly like the uninterrupted one.
    assert torch.equal(rank0["resumed"], rank0["params"])
    assert torch.equal(rank1["resumed"], rank1["params"])
    for result in (rank0, rank1):
        assert result["global_rng_untouched"].item()
        assert result["broadcasts"].item() == 2


@pytest.mark.timeout(200)
def test_gramian_mode_under_ddp_is_rank_local_jacobian_descent(
    ranks: list[dict[str, dict[str, Tensor]]],
) -> None:
    rank0, rank1 = (result["gramian/ddp"] for result in ranks)
    assert torch.equal(rank0["params"], rank1["params"])
    # Each rank weights its own losses from its own Gramian; DDP averages J_rᵀ w_r over ranks.
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        opt.zero_grad()
        for rank in (0, 1):
            x, y = _batch(step, rank)
            losses = _sample_losses(model(x), y)
            rows = [
                torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
                for loss in losses
            ]
            jacobian = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])
            weights = UPGradWeighting()(jacobian @ jacobian.T)
            (losses @ weights / 2).backward()
        opt.step()
    torch.testing.assert_close(rank0["params"], _flat(model), rtol=0, atol=1e-6)
    # ... which is not the single-process step on the full batch.
    full = _mlp()
    full_opt = JacobianOptimizer(
        torch.optim.SGD(full.parameters(), lr=0.1), UPGrad(), engine=Engine(full, batch_dim=0)
    )
    for step in range(STEPS):
        x, y = _batch(step, None)
        full_opt.zero_grad()
        full_opt.step(_sample_losses(full(x), y))
    assert not torch.allclose(rank0["params"], _flat(full), rtol=0, atol=1e-6)


def _mlp_params() -> Tensor:
    return _flat(_mlp())


# -- one process: the shared generator in the state dict ------------------------------------------


@pytest.fixture
def one_rank_group() -> Iterator[Any]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_state_dict_holds_the_shared_generator_as_a_plain_tensor(one_rank_group: Any) -> None:
    model = _mlp()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), Random(), process_group=one_rank_group
    )
    assert opt.state_dict()["jdoptim"]["shared_rng_state"] is None  # not seeded yet
    x, y = _batch(0, None)
    opt.step(_output_losses(model(x), y))
    state = opt.state_dict()["jdoptim"]["shared_rng_state"]
    assert state.dtype == torch.uint8
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    assert torch.equal(torch.load(saved, weights_only=True)["jdoptim"]["shared_rng_state"], state)


def test_a_bad_shared_generator_state_changes_nothing(one_rank_group: Any) -> None:
    model = _mlp()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), Random(), process_group=one_rank_group
    )
    x, y = _batch(0, None)
    opt.step(_output_losses(model(x), y))
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["jdoptim"]["shared_rng_state"] = torch.zeros(3)
    bad["param_groups"][0]["lr"] = 0.5
    with pytest.raises(TypeError, match="shared_rng_state"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"][0]["lr"] == 0.1
    assert torch.equal(after["jdoptim"]["shared_rng_state"], before["jdoptim"]["shared_rng_state"])
