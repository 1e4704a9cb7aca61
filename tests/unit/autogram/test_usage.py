"""The engine in use: weights back-propagated through the losses, step after step."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from _explicit_gramian import explicit_jacobian, trainable
from torch import Tensor, nn

from jdoptim import autojac
from jdoptim.aggregation import Flattening, MeanWeighting, UPGrad, UPGradWeighting
from jdoptim.autogram import Engine

TOLERANCE = {"rtol": 1e-8, "atol": 1e-10}


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 5),
        nn.Tanh(),
        nn.Linear(5, 3),
    ).double()


def _grads(parameters: list[nn.Parameter]) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in parameters])


@pytest.mark.parametrize("batch_dim", [0, None])
def test_weighted_backward_equals_the_aggregated_jacobian(batch_dim: int | None) -> None:
    model = _cnn()
    parameters = trainable(model)
    x, y = torch.randn(6, 2, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    engine = Engine(model, batch_dim=batch_dim)

    losses = nn.functional.cross_entropy(model(x), y, reduction="none")
    weights = UPGradWeighting()(engine.compute_gramian(losses))
    jacobian = explicit_jacobian(losses, parameters)
    losses.backward(weights)
    by_gramian = _grads(parameters)

    torch.testing.assert_close(by_gramian, weights @ jacobian, **TOLERANCE)
    torch.testing.assert_close(by_gramian, UPGrad()(jacobian), **TOLERANCE)

    model.zero_grad()
    losses = nn.functional.cross_entropy(model(x), y, reduction="none")
    autojac.backward(losses, inputs=parameters)
    autojac.jac_to_grad(parameters, UPGrad())
    torch.testing.assert_close(by_gramian, _grads(parameters), **TOLERANCE)


def test_instance_wise_multi_task_learning() -> None:
    trunk = nn.Sequential(nn.Linear(4, 6), nn.ReLU()).double()
    heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(3)]).double()
    parameters = trainable(trunk, heads)
    engine = Engine(trunk, heads, batch_dim=0)
    x, targets = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)

    features = trunk(x)
    predictions = torch.cat([head(features) for head in heads], dim=1)
    losses = (predictions - targets) ** 2  # [batch, tasks]
    gramian = engine.compute_gramian(losses)
    assert gramian.shape == (5, 3, 3, 5)
    weights = Flattening(UPGradWeighting())(gramian)
    assert weights.shape == (5, 3)
    jacobian = explicit_jacobian(losses, parameters)
    losses.backward(weights)

    torch.testing.assert_close(_grads(parameters), UPGrad()(jacobian), **TOLERANCE)


@pytest.mark.parametrize(
    ("norm", "tasks", "steps"),
    [(False, 1, 1000), (False, 2, 200), (True, 2, 15)],
    ids=["one_loss_per_sample", "two_tasks", "replayed_layer_norm"],
)
def test_engine_reused_step_after_step_does_not_grow_memory(
    norm: bool, tasks: int, steps: int
) -> None:
    torch.manual_seed(0)
    middle = nn.LayerNorm(4) if norm else nn.Identity()
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), middle, nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    engine = Engine(model, batch_dim=0)
    # The engine is under test: the cheapest weighting keeps a thousand steps fast.
    weighting = Flattening(MeanWeighting())
    x = torch.randn(8, 3)

    def step() -> None:
        optimizer.zero_grad()
        losses = model(x).pow(2)[:, :tasks]
        losses.backward(weighting(engine.compute_gramian(losses)))
        optimizer.step()

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if issubclass(type(obj), Tensor))

    for _ in range(10):
        step()
    before = live_tensors()
    for _ in range(steps):
        step()
    assert live_tensors() <= before
    assert engine._recorder.calls == []


def test_no_reference_to_the_graph_is_kept() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    engine = Engine(model, batch_dim=0)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    hidden = model[1](model[0](x))
    losses = model[2](hidden).sum(1)
    references = [weakref.ref(x), weakref.ref(hidden), weakref.ref(losses)]
    losses.backward(UPGradWeighting()(engine.compute_gramian(losses)))
    del x, hidden, losses
    gc.collect()
    assert all(reference() is None for reference in references)


def test_deleted_engine_leaves_no_hook() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    engine = Engine(model, batch_dim=0)
    reference = weakref.ref(engine)
    del engine
    gc.collect()
    assert reference() is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model)


@pytest.mark.parametrize("hook", ["pre", "post"])
def test_engine_deleted_by_an_earlier_hook_of_the_same_call(hook: str) -> None:
    # torch calls a module's hooks from a copy taken before the first one: the hooks of an
    # engine deleted by an earlier hook are still called, without their keyword arguments.
    model = nn.Linear(3, 2, dtype=torch.float64)
    engines = [Engine(model, batch_dim=0)]

    def drop(*_: object) -> None:
        engines.clear()
        gc.collect()  # The engine and its recorder reference each other.

    if hook == "pre":
        model.register_forward_pre_hook(drop, prepend=True)
    else:
        model.register_forward_hook(drop, prepend=True)
    losses = model(torch.randn(4, 3, dtype=torch.float64)).sum(1)
    assert not engines
    survivor = Engine(model, batch_dim=0)
    losses = model(torch.randn(4, 3, dtype=torch.float64)).sum(1)
    gramian = survivor.compute_gramian(losses)
    jacobian = explicit_jacobian(losses, trainable(model))
    torch.testing.assert_close(gramian, jacobian @ jacobian.T)


class ScaledLayer(nn.Module):
    """A module with its own parameter around a child: the engine replays it whole."""

    def __init__(self) -> None:
        super().__init__()
        self.child = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.child(x)) * self.scale


def test_replays_of_the_modules_are_not_recorded() -> None:
    model = ScaledLayer().double()
    engine = Engine(model, batch_dim=0)
    losses = model(torch.randn(4, 3, dtype=torch.float64)).pow(2).sum(1)
    engine.compute_gramian(losses)
    assert engine._recorder.calls == []
