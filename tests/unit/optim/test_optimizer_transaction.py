"""One transaction: a failure injected at any stage of ``backward``, ``step``, ``aggregate`` or
``load_state_dict`` leaves parameters, ``.grad``, ``.jac``, the wrapped optimizer's state and the
aggregators' state bit-identical."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer, NonFiniteGradientError
from jdoptim.aggregation import Aggregator, UPGrad


class CountingAggregator(Aggregator):
    """Counts its calls in a buffer, and raises on the call given by ``fail_at``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.fail_at = -1

    def forward(self, matrix: Tensor, /) -> Tensor:
        self.calls += 1
        if int(self.calls) == self.fail_at:
            raise ValueError("injected aggregation failure")
        return matrix.mean(dim=0)


class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        raise RuntimeError("injected backward failure")


class FailingSGD(torch.optim.SGD):
    """An optimizer that updates half of its parameters, then fails."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        params = self.param_groups[0]["params"]
        with torch.no_grad():
            params[0].add_(1.0)
        self.state[params[0]]["touched"] = torch.ones(1)
        raise RuntimeError("injected step failure")


def make_setup(
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
) -> tuple[nn.Sequential, JacobianOptimizer, CountingAggregator, CountingAggregator]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    first, second = CountingAggregator(), CountingAggregator()
    inner = optimizer(
        [
            {"params": model[0].parameters(), "aggregator": first},
            {"params": model[2].parameters(), "aggregator": second},
        ],
        lr=0.1,
    )
    opt = JacobianOptimizer(inner)
    if optimizer is torch.optim.Adam:
        opt.step(losses(model))  # some inner state
    opt.zero_grad()
    opt.backward(losses(model))  # some .grad to keep
    return model, opt, first, second


def losses(model: nn.Module) -> Tensor:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    return model(x).square().mean(dim=0)


def snapshot(model: nn.Module, opt: JacobianOptimizer) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "jacs": [getattr(p, "jac", None) for p in model.parameters()],
        "state": copy.deepcopy(opt.state_dict()),
    }


def assert_unchanged(before: dict[str, Any], model: nn.Module, opt: JacobianOptimizer) -> None:
    after = snapshot(model, opt)
    for a, b in zip(before["params"], after["params"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip(before["jacs"], after["jacs"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert_same(before["state"], after["state"])


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_failure_while_computing_the_jacobian() -> None:
    model, opt, _, _ = make_setup()
    before = snapshot(model, opt)
    with pytest.raises(RuntimeError, match="injected backward failure"):
        opt.step(FailingBackward.apply(losses(model)))
    assert_unchanged(before, model, opt)


def test_failure_of_the_second_group_rolls_back_the_first_aggregator() -> None:
    model, opt, first, second = make_setup()
    second.fail_at = int(second.calls) + 1
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="parameter group 1"):
        opt.step(losses(model))
    assert_unchanged(before, model, opt)
    assert int(first.calls) == int(before["state"]["jdoptim"]["group_aggregators"][0]["calls"])


def test_non_finite_gradients_refused_by_step() -> None:
    model, opt, _, _ = make_setup()
    before = snapshot(model, opt)
    with pytest.raises(NonFiniteGradientError):
        opt.step(losses(model) * float("nan"))
    assert_unchanged(before, model, opt)


def test_failure_of_the_wrapped_step_undoes_the_backward() -> None:
    model, opt, _, _ = make_setup()
    before = snapshot(model, opt)
    original = opt.optimizer.step

    def failing_step(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected step failure")

    opt.optimizer.step = failing_step  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="injected step failure"):
        opt.step(losses(model))
    opt.optimizer.step = original  # type: ignore[method-assign]
    assert_unchanged(before, model, opt)


def test_custom_optimizer_failing_after_an_update_inside_a_closure_step() -> None:
    model, opt, _, _ = make_setup(FailingSGD)
    before = snapshot(model, opt)
    with pytest.raises(RuntimeError, match="injected step failure"):
        opt.step(lambda: losses(model))
    assert_unchanged(before, model, opt)


def test_failure_of_aggregate_keeps_the_accumulated_jacobians() -> None:
    model, opt, _, second = make_setup()
    opt.zero_grad()
    opt.backward(losses(model), aggregate=False)
    second.fail_at = int(second.calls) + 1
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="injected aggregation failure"):
        opt.aggregate()
    assert_unchanged(before, model, opt)
    second.fail_at = -1
    opt.aggregate()  # the accumulation is still pending and can be aggregated
    assert all(p.grad is not None for p in model.parameters())


def test_failure_of_load_state_dict() -> None:
    model, opt, _, _ = make_setup()
    saved = opt.state_dict()
    opt.step(losses(model))  # a later state
    before = snapshot(model, opt)
    broken = copy.deepcopy(saved)
    broken["jdoptim"]["group_aggregators"][1] = {"calls": torch.zeros(3)}  # wrong shape
    with pytest.raises(RuntimeError):
        opt.load_state_dict(broken)
    assert_unchanged(before, model, opt)


def test_failure_in_the_aggregator_of_a_backward_alone() -> None:
    model, opt, first, _ = make_setup()
    first.fail_at = int(first.calls) + 1
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="parameter group 0"):
        opt.backward(losses(model))
    assert_unchanged(before, model, opt)


def test_default_aggregator_keeps_working_after_a_failure() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    x = torch.randn(4, 3)
    with pytest.raises(NonFiniteGradientError):
        opt.step(model(x).mean(dim=0) * float("inf"))
    opt.step(model(x).mean(dim=0))
    assert all(torch.isfinite(p).all() for p in model.parameters())
