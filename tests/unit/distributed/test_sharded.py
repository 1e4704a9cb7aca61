"""Sharded aggregation over two gloo ranks: the same steps as the all-reduce path, on every rank.

With a process group and aggregators that allow it (Gramian-weighted or column-wise), the
optimizer reduce-scatters the Jacobian by columns, all-reduces the Gramians of the shards and
all-gathers the update. One spawn runs every scenario; each is run once sharded and once with
sharding turned off (the all-reduce path), and the tests compare them.
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

import jdoptim.optim._sharded as sharded_module
from jdoptim import JacobianOptimizer
from jdoptim.aggregation import (
    MGDA,
    Aggregator,
    ConFIG,
    GradDrop,
    GradNormWeighting,
    GramianWeightedAggregator,
    TrimmedMean,
    UPGrad,
)
from jdoptim.autojac import all_reduce_jac, backward, jac_to_grad, sharded_jac_to_grad

STEPS = 3
BATCH = 8


def _mlp() -> nn.Module:
    # 5·6 + 6 + 6·3 + 3 = 57 parameters: the shards (29 and 28 columns) cut through tensors.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _batch(step: int, rank: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(BATCH, 3, generator=generator, dtype=torch.float64)
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    return x[half], y[half]


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# Each configuration gives the parameter groups of the optimizer.
CONFIGS: dict[str, Callable[[nn.Module], list[dict[str, Any]]]] = {
    "UPGrad": lambda model: [{"params": model.parameters(), "aggregator": UPGrad()}],
    "MGDA": lambda model: [{"params": model.parameters(), "aggregator": MGDA()}],
    "GradDrop": lambda model: [{"params": model.parameters(), "aggregator": GradDrop()}],
    "TrimmedMean": lambda model: [
        {"params": model.parameters(), "aggregator": TrimmedMean(trim_number=1)}
    ],
    "GradNorm": lambda model: [
        {
            "params": model.parameters(),
            "aggregator": GramianWeightedAggregator(GradNormWeighting(lr=0.5)),
        }
    ],
    "mix": lambda model: [
        {"params": model[0].parameters(), "aggregator": UPGrad()},
        {"params": [model[2].weight], "aggregator": GradDrop()},
        {"params": [model[2].bias], "aggregator": TrimmedMean(trim_number=1)},
    ],
    "ConFIG": lambda model: [{"params": model.parameters(), "aggregator": ConFIG()}],
}


@contextmanager
def _counting(names: tuple[str, ...], counts: dict[str, int]) -> Iterator[None]:
    originals = {name: getattr(dist, name) for name in names}

    def counter(name: str) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[name] = counts.get(name, 0) + 1
            return originals[name](*args, **kwargs)

        return counted

    for name in names:
        setattr(dist, name, counter(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


COLLECTIVES = ("all_reduce", "reduce_scatter_single", "all_gather_single")


def _train(rank: int, config: str, sharded: bool) -> dict[str, Tensor]:
    model = _mlp()
    opt = JacobianOptimizer(
        torch.optim.SGD(CONFIGS[config](model), lr=0.1),
        UPGrad(),
        process_group=dist.group.WORLD,
    )
    original = sharded_module.uses_sharding
    if not sharded:
        sharded_module.uses_sharding = lambda context, blocks: False  # type: ignore[assignment]
    counts: dict[str, int] = {}
    try:
        torch.manual_seed(1000 + rank)  # the global generators differ between the ranks
        for step in range(STEPS):
            x, y = _batch(step, rank)
            opt.zero_grad()
            losses = (model(x) - y).pow(2).mean(dim=0)
            with _counting(COLLECTIVES, counts):
                opt.step(losses)
    finally:
        sharded_module.uses_sharding = original
    weights = opt.last_weights[0]
    return {
        "params": _flat(model),
        "weights": torch.full((3,), torch.nan) if weights is None else weights,
        **{name: torch.tensor(counts.get(name, 0)) for name in COLLECTIVES},
    }


def _low_level(rank: int) -> dict[str, Tensor]:
    """`sharded_jac_to_grad` against `all_reduce_jac` + `jac_to_grad` on the same Jacobians."""
    results = {}
    for name, aggregator in (("UPGrad", UPGrad()), ("TrimmedMean", TrimmedMean(trim_number=1))):
        grads = []
        for sharded in (True, False):
            model = _mlp()
            x, y = _batch(0, rank)
            backward((model(x) - y).pow(2).mean(dim=0))
            params = list(model.parameters())
            if sharded:
                sharded_jac_to_grad(params, aggregator)
            else:
                all_reduce_jac(params)
                jac_to_grad(params, aggregator)
            grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
        results[name] = torch.stack(grads)
    return results


def _all_scenarios(rank: int) -> dict[str, dict[str, Tensor]]:
    results = {}
    for config in CONFIGS:
        for sharded in (True, False):
            results[f"{config}/{sharded}"] = _train(rank, config, sharded)
    results["low_level"] = _low_level(rank)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, Tensor]]]:
    return run_on_two_ranks(_all_scenarios, tmp_path_factory.mktemp("sharded"))


SHARDED = [name for name in CONFIGS if name != "ConFIG"]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("config", SHARDED)
def test_sharded_aggregation_equals_the_all_reduce_path(
    ranks: list[dict[str, dict[str, Tensor]]], config: str
) -> None:
    rank0, rank1 = (result[f"{config}/True"] for result in ranks)
    reference = ranks[0][f"{config}/False"]
    torch.testing.assert_close(rank0["params"], reference["params"], rtol=0, atol=1e-12)
    torch.testing.assert_close(rank0["weights"], reference["weights"], equal_nan=True)
    assert not torch.equal(rank0["params"], _flat(_mlp()))  # it trained
    # Every rank holds the same parameters, bit for bit.
    assert torch.equal(rank0["params"], rank1["params"])
    assert torch.equal(rank0["weights"].nan_to_num(), rank1["weights"].nan_to_num())
    # A reduce-scatter, an all-reduce (Gramians and loss values) and an all-gather per step.
    for result in (rank0, rank1):
        assert result["reduce_scatter_single"].item() == STEPS
        assert result["all_reduce"].item() == STEPS
        assert result["all_gather_single"].item() == STEPS


@pytest.mark.timeout(200)
def test_other_aggregators_keep_the_all_reduce_path(
    ranks: list[dict[str, dict[str, Tensor]]],
) -> None:
    rank0, rank1 = (result["ConFIG/True"] for result in ranks)
    assert torch.equal(rank0["params"], rank1["params"])
    for result in (rank0, rank1):
        assert result["reduce_scatter_single"].item() == 0
        assert result["all_gather_single"].item() == 0
        assert result["all_reduce"].item() == STEPS


@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", ["UPGrad", "TrimmedMean"])
def test_sharded_jac_to_grad_equals_all_reduce_jac_then_jac_to_grad(
    ranks: list[dict[str, dict[str, Tensor]]], name: str
) -> None:
    rank0, rank1 = (result["low_level"][name] for result in ranks)
    torch.testing.assert_close(rank0[0], rank0[1], rtol=0, atol=1e-12)
    assert torch.equal(rank0[0], rank1[0])


# -- one process ----------------------------------------------------------------------------------


@pytest.fixture
def one_rank_group() -> Iterator[Any]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_sharded_jac_to_grad_refuses_an_aggregator_that_needs_the_whole_jacobian(
    one_rank_group: Any,
) -> None:
    param = torch.ones(2, requires_grad=True)
    backward(torch.stack([param.sum(), param.prod(), param[0]]))
    with pytest.raises(ValueError, match="`aggregator` must be a GramianWeightedAggregator"):
        sharded_jac_to_grad([param], ConFIG())
    assert param.grad is None and hasattr(param, "jac")


def test_sharded_jac_to_grad_on_one_rank_equals_jac_to_grad(one_rank_group: Any) -> None:
    aggregator: Aggregator
    for aggregator in (UPGrad(), MGDA(), TrimmedMean(trim_number=1)):
        grads = []
        for sharded in (True, False):
            param = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
            backward(torch.stack([param.pow(2).sum(), param.prod(), -param[1]]))
            if sharded:
                sharded_jac_to_grad([param], aggregator)
            else:
                jac_to_grad([param], aggregator)
            grads.append(param.grad)
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


def test_sharded_jac_to_grad_gives_nan_on_a_non_finite_jacobian(one_rank_group: Any) -> None:
    for aggregator in (UPGrad(), TrimmedMean(trim_number=0)):
        param = torch.ones(2, requires_grad=True)
        backward(torch.stack([param.sum(), param.prod()]))
        param.jac = param.jac.clone()
        param.jac[0, 0] = torch.inf
        sharded_jac_to_grad([param], aggregator)
        assert torch.isnan(param.grad).all()


def test_sharded_jac_to_grad_rescales_a_gramian_that_would_overflow(one_rank_group: Any) -> None:
    # In float32, J Jᵀ of entries near 1e25 overflows: like one process, the shards are scaled
    # by a power of two first, and the update stays finite and equal.
    grads = []
    for sharded in (True, False):
        param = torch.ones(3, requires_grad=True)
        backward(torch.stack([param.sum(), param[0] - param[2]]))
        param.jac = param.jac * 1e25
        if sharded:
            weights = sharded_jac_to_grad([param], UPGrad())
        else:
            weights = jac_to_grad([param], UPGrad())
        assert weights is not None and torch.isfinite(weights).all()
        grads.append(param.grad)
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1])
