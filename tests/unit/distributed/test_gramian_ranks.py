"""Gramian mode over two gloo ranks with a process group: the single-process full-batch step.

The engine computes the Gramian of the losses of both ranks (cross-rank blocks included) from
the gathered inputs and output gradients of each layer, both ranks weight it identically, and
each differentiates its own losses with its slice of the weights. One spawn runs every scenario.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
from _distributed import run_on_two_ranks
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import Mean, Random, UPGrad
from jdoptim.autogram import Engine

STEPS = 3
SIZES = {"even": (4, 4), "uneven": (3, 5)}  # the local batch sizes of ranks 0 and 1


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).double()


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": _mlp, "cnn": _cnn}
AGGREGATORS: dict[str, Callable[[], Any]] = {"UPGrad": UPGrad, "Mean": Mean, "Random": Random}


def _batch(model: str, step: int, split: str, rank: int | None) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    shape = (8, 5) if model == "mlp" else (8, 1, 6, 6)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    y = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    if rank is None:
        return x, y
    first = SIZES[split][0]
    part = slice(0, first) if rank == 0 else slice(first, 8)
    return x[part], y[part]


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _losses(output: Tensor, y: Tensor, per_sample: bool) -> Tensor:
    if per_sample:
        return (output - y).pow(2).mean(dim=1)  # one loss per sample: [B]
    return (output - y).pow(2).mean(dim=0)  # one mean-reduced loss per output: [3]


def _train(
    rank: int | None,
    model_name: str,
    aggregator: str,
    per_sample: bool,
    split: str = "even",
    wrap: bool = False,
    steps: range = range(STEPS),
    state: dict[str, Any] | None = None,
) -> tuple[nn.Module, JacobianOptimizer]:
    model = MODELS[model_name]()
    forward: Callable[..., Tensor] = DistributedDataParallel(model) if wrap else model
    engine = Engine(model, batch_dim=0 if per_sample else None)
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        AGGREGATORS[aggregator](),
        engine=engine,
        process_group=None if rank is None else dist.group.WORLD,
    )
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    for step in steps:
        x, y = _batch(model_name, step, split, rank)
        opt.zero_grad()
        opt.step(_losses(forward(x), y, per_sample))
    return model, opt


SCENARIOS = [
    ("mlp", "UPGrad", True, "even", False),
    ("mlp", "UPGrad", True, "even", True),
    ("mlp", "Mean", True, "even", False),
    ("mlp", "UPGrad", True, "uneven", False),
    ("mlp", "UPGrad", True, "uneven", True),
    ("cnn", "UPGrad", True, "even", False),
    ("cnn", "Mean", True, "even", True),
    ("cnn", "UPGrad", True, "uneven", False),
    ("mlp", "UPGrad", False, "even", False),
    ("mlp", "UPGrad", False, "even", True),
    ("cnn", "UPGrad", False, "even", False),
]


def _key(scenario: tuple[str, str, bool, str, bool]) -> str:
    return "/".join(str(part) for part in scenario)


def _all_scenarios(rank: int) -> dict[str, Tensor]:
    torch.manual_seed(1000 + rank)  # the global generators differ between the ranks
    results = {}
    for scenario in SCENARIOS:
        model, opt = _train(rank, *scenario)
        results[_key(scenario)] = _flat(model)
        results[_key(scenario) + "/weights"] = opt.last_weights[0]
    # A randomised weighting, uninterrupted and resumed from a checkpoint after one step.
    model, _ = _train(rank, "mlp", "Random", True)
    results["random"] = _flat(model)
    first, first_opt = _train(rank, "mlp", "Random", True, steps=range(1))
    saved = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": first_opt.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    resumed, _ = _train(rank, "mlp", "Random", True, steps=range(1, STEPS), state=state)
    results["random/resumed"] = _flat(resumed)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Tensor]]:
    return run_on_two_ranks(_all_scenarios, tmp_path_factory.mktemp("gramian_ranks"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=_key)
def test_gramian_mode_across_ranks_equals_the_full_batch_step(
    ranks: list[dict[str, Tensor]], scenario: tuple[str, str, bool, str, bool]
) -> None:
    key = _key(scenario)
    model_name, aggregator, per_sample = scenario[:3]
    expected, expected_opt = _train(None, model_name, aggregator, per_sample)
    torch.testing.assert_close(ranks[0][key], _flat(expected), rtol=0, atol=1e-9)
    assert not torch.equal(ranks[0][key], _flat(MODELS[model_name]()))  # it trained
    # The weights of the global losses, the same on both ranks, bit for bit.
    weights = expected_opt.last_weights[0]
    assert weights is not None
    torch.testing.assert_close(ranks[0][key + "/weights"], weights, rtol=0, atol=1e-9)
    assert torch.equal(ranks[0][key + "/weights"], ranks[1][key + "/weights"])
    assert torch.equal(ranks[0][key], ranks[1][key])


@pytest.mark.timeout(300)
def test_a_randomised_weighting_draws_the_same_numbers_and_resumes_exactly(
    ranks: list[dict[str, Tensor]],
) -> None:
    assert torch.equal(ranks[0]["random"], ranks[1]["random"])
    assert torch.equal(ranks[0]["random/resumed"], ranks[0]["random"])
    assert torch.equal(ranks[1]["random/resumed"], ranks[1]["random"])
