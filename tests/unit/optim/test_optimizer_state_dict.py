"""Checkpoint and resume: the state of the wrapped optimizer and of stateful aggregators."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import Mean, NashMTL, UPGrad


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def task_losses(model: nn.Module, step: int) -> Tensor:
    generator = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(16, 5, generator=generator), torch.randn(16, 3, generator=generator)
    return ((model(x) - y) ** 2).mean(dim=0)


def make_optimizer(model: nn.Module) -> JacobianOptimizer:
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    return JacobianOptimizer(adam, NashMTL(n_tasks=3, update_weights_every=2))


def train(model: nn.Module, opt: JacobianOptimizer, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        opt.step(task_losses(model, step))


def save_and_load(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resumed_run_continues_bit_for_bit() -> None:
    model = make_model()
    opt = make_optimizer(model)
    train(model, opt, range(6))

    interrupted = make_model()
    interrupted_opt = make_optimizer(interrupted)
    train(interrupted, interrupted_opt, range(3))  # odd: the next call reuses NashMTL's weights
    checkpoint = save_and_load(
        {"model": interrupted.state_dict(), "optimizer": interrupted_opt.state_dict()}
    )
    del interrupted, interrupted_opt

    resumed = make_model()
    resumed_opt = make_optimizer(resumed)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    assert int(resumed_opt.aggregator.step) == 3
    train(resumed, resumed_opt, range(3, 6))

    for actual, expected in zip(resumed.parameters(), model.parameters()):
        assert torch.equal(actual, expected)
    assert torch.equal(resumed_opt.aggregator.weights, opt.aggregator.weights)


def test_state_dict_holds_only_plain_values() -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.SGD(
            [
                {"params": model[0].parameters(), "aggregator": NashMTL(n_tasks=3)},
                {"params": model[2].parameters(), "aggregator": Mean()},
            ],
            lr=0.1,
        )
    )
    train(model, opt, range(2))
    state = opt.state_dict()
    assert all("aggregator" not in group for group in state["param_groups"])
    assert sorted(state["jdoptim"]["group_aggregators"]) == [0, 1]
    loaded = save_and_load(state)  # weights_only=True: no module or custom class inside
    weights = loaded["jdoptim"]["group_aggregators"][0]["weights"]
    assert torch.equal(weights, opt.param_groups[0]["aggregator"].weights)


def test_loading_keeps_the_aggregator_objects_and_loads_their_state() -> None:
    model = make_model()
    nash = NashMTL(n_tasks=3)
    opt = JacobianOptimizer(
        torch.optim.SGD([{"params": model.parameters(), "aggregator": nash}], lr=0.1)
    )
    train(model, opt, range(2))
    state = save_and_load(opt.state_dict())
    nash.reset()
    opt.load_state_dict(state)
    assert opt.param_groups[0]["aggregator"] is nash
    assert int(nash.step) == 2
    # The wrapped optimizer's own load_state_dict keeps the aggregator too.
    opt.optimizer.load_state_dict(opt.optimizer.state_dict())
    assert opt.param_groups[0]["aggregator"] is nash


def test_a_plain_torch_state_dict_loads_into_the_wrapper() -> None:
    model = make_model()
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    opt = JacobianOptimizer(adam, UPGrad())
    train(model, opt, range(2))
    plain_state = adam.state_dict()
    other_model = make_model()
    other = JacobianOptimizer(torch.optim.Adam(other_model.parameters(), lr=0.5))
    other.load_state_dict(plain_state)
    assert other.param_groups[0]["lr"] == 0.01
    # The moments are those of the first run, keyed by the new model's parameters.
    for param, saved in zip(other_model.parameters(), adam.state.values()):
        assert int(other.state[param]["step"]) == 2
        assert torch.equal(other.state[param]["exp_avg"], saved["exp_avg"])


def test_a_state_dict_that_does_not_fit_changes_nothing() -> None:
    model = make_model()
    opt = make_optimizer(model)
    train(model, opt, range(3))
    groups_before = opt.param_groups
    steps_before = [int(state["step"]) for state in opt.state.values()]
    aggregator_step = int(opt.aggregator.step)

    other = nn.Linear(2, 2)
    wrong = JacobianOptimizer(torch.optim.Adam(other.parameters()), NashMTL(n_tasks=3)).state_dict()
    with pytest.raises(ValueError):
        opt.load_state_dict(wrong)
    assert opt.param_groups is groups_before
    assert [int(state["step"]) for state in opt.state.values()] == steps_before
    assert int(opt.aggregator.step) == aggregator_step


def test_state_dict_hooks_on_the_wrapper_fire() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    calls = []
    opt.register_state_dict_pre_hook(lambda optimizer: calls.append("save"))
    opt.register_load_state_dict_post_hook(lambda optimizer: calls.append("load"))
    opt.load_state_dict(opt.state_dict())
    assert calls == ["save", "load"]
