"""Engine.compute_gramian against explicit Gramians (float64)."""

from __future__ import annotations

import pytest
import torch
from _explicit_gramian import explicit_gramian, trainable
from _gramian_models import ARCHITECTURES, Architecture
from torch import nn

from jdoptim.autogram import Engine

TOLERANCE = {"rtol": 1e-8, "atol": 1e-10}
INDEPENDENT = [a for a in ARCHITECTURES if a.batch_independent]


def _check(architecture: Architecture, batch_dim: int | None, transpose: bool = False) -> None:
    model = architecture.model
    engine = Engine(model, batch_dim=batch_dim)
    losses = architecture.losses(model, architecture.inputs)
    if transpose:
        losses = losses.T
    gramian = engine.compute_gramian(losses)
    expected = explicit_gramian(losses, trainable(model))
    assert gramian.shape == losses.shape + losses.shape[::-1]
    torch.testing.assert_close(gramian, expected, **TOLERANCE)


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=repr)
def test_matches_explicit_gramian_without_batch_dim(architecture: Architecture) -> None:
    _check(architecture, batch_dim=None)


@pytest.mark.parametrize("architecture", INDEPENDENT, ids=repr)
def test_matches_explicit_gramian_with_batch_dim_0(architecture: Architecture) -> None:
    _check(architecture, batch_dim=0)


@pytest.mark.parametrize("architecture", INDEPENDENT, ids=repr)
def test_matches_explicit_gramian_with_batch_dim_1(architecture: Architecture) -> None:
    _check(architecture, batch_dim=1, transpose=True)


@pytest.mark.parametrize("batch_dim", [0, -1, None])
def test_vector_of_per_sample_losses(batch_dim: int | None) -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    engine = Engine(model, batch_dim=batch_dim)
    losses = model(torch.randn(6, 5, dtype=torch.float64)).squeeze(1) ** 2
    gramian = engine.compute_gramian(losses)
    assert gramian.shape == (6, 6)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


def test_scalar_output_gives_a_0d_gramian() -> None:
    model = nn.Linear(3, 2).double()
    engine = Engine(model, batch_dim=None)
    loss = model(torch.randn(4, 3, dtype=torch.float64)).pow(2).sum()
    gramian = engine.compute_gramian(loss)
    assert gramian.shape == ()
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    torch.testing.assert_close(gramian, sum((g**2).sum() for g in grads), **TOLERANCE)


def test_three_dimensional_losses_with_batch_in_the_middle() -> None:
    model = nn.Linear(3, 6).double()
    engine = Engine(model, batch_dim=1)
    x = torch.randn(4, 3, dtype=torch.float64)
    losses = model(x).reshape(4, 2, 3).permute(1, 0, 2) ** 2  # [2, batch, 3]
    gramian = engine.compute_gramian(losses)
    assert gramian.shape == (2, 4, 3, 3, 4, 2)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


def test_frozen_layer_is_excluded() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    model[0].requires_grad_(False)
    engine = Engine(model, batch_dim=0)
    losses = model(torch.randn(4, 5, dtype=torch.float64)).pow(2).sum(1)
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, [*model[2].parameters()]))


def test_frozen_bias_only() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    model[2].bias.requires_grad_(False)
    engine = Engine(model, batch_dim=0)
    losses = model(torch.randn(4, 5, dtype=torch.float64)).pow(2).sum(1)
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)))


@pytest.mark.parametrize("batch_dim", [0, None])
def test_partial_engine_on_the_last_two_layers(batch_dim: int | None) -> None:
    model = nn.Sequential(
        nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)
    ).double()
    engine = Engine(model[2], model[4], batch_dim=batch_dim)
    losses = model(torch.randn(4, 5, dtype=torch.float64)).pow(2)
    gramian = engine.compute_gramian(losses)
    expected = explicit_gramian(losses, trainable(model[2], model[4]))
    torch.testing.assert_close(gramian, expected, **TOLERANCE)


def test_module_listed_twice_counts_once() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    engine = Engine(model, model[0], batch_dim=0)
    losses = model(torch.randn(4, 5, dtype=torch.float64)).pow(2).sum(1)
    torch.testing.assert_close(
        engine.compute_gramian(losses), explicit_gramian(losses, trainable(model))
    )


def test_in_place_operation_on_a_hooked_output() -> None:
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)).double()
    engine = Engine(model, batch_dim=0)
    losses = model(torch.randn(4, 5, dtype=torch.float64)).pow(2).sum(1)
    torch.testing.assert_close(
        engine.compute_gramian(losses), explicit_gramian(losses, trainable(model))
    )


def test_output_independent_of_the_engine_gives_zeros() -> None:
    used, unused = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    engine = Engine(unused, batch_dim=0)
    losses = used(torch.randn(4, 3, dtype=torch.float64)).sum(1)
    torch.testing.assert_close(engine.compute_gramian(losses), torch.zeros(4, 4).double())


def test_records_of_a_forward_are_forgotten_after_use() -> None:
    model = nn.Linear(3, 2).double()
    engine = Engine(model, batch_dim=0)
    model(torch.randn(4, 3, dtype=torch.float64))  # A forward whose losses are never used.
    losses = model(torch.randn(5, 3, dtype=torch.float64)).sum(1)
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)))
    assert engine._recorder.calls == []


def test_forward_without_grad_is_not_recorded() -> None:
    model = nn.Linear(3, 2)
    engine = Engine(model, batch_dim=0)
    with torch.no_grad():
        model(torch.randn(4, 3))
    assert engine._recorder.calls == []


def test_float32_model() -> None:
    model = nn.Sequential(nn.Conv1d(2, 3, 2), nn.Flatten(), nn.Linear(6, 2))
    engine = Engine(model, batch_dim=0)
    losses = model(torch.randn(5, 2, 3)).pow(2).sum(1)
    gramian = engine.compute_gramian(losses)
    assert gramian.dtype == torch.float32
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)))


@pytest.mark.parametrize("architecture", INDEPENDENT, ids=repr)
def test_one_loss_per_sample(architecture: Architecture) -> None:
    model = architecture.model
    engine = Engine(model, batch_dim=0)
    losses = architecture.losses(model, architecture.inputs).sum(1)
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


@pytest.mark.parametrize(
    "convolution",
    [
        nn.Conv1d(2, 3, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(2, 3, (2, 3), stride=(2, 1), dilation=(1, 2), padding=(1, 0)),
        nn.Conv2d(2, 3, 3, stride=3),
        nn.Conv3d(2, 2, 2, padding=1),
        nn.Conv2d(2, 4, 3, groups=2),
        nn.Conv2d(2, 3, 3, padding="same"),
        nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(2, 40, 3, stride=2, dilation=2),
        nn.Conv1d(2, 60, 5, stride=3, padding=2),
    ],
    ids=[
        "conv1d_no_bias",
        "strided_dilated",
        "stride_3",
        "conv3d",
        "groups",
        "same",
        "reflect",
        "large_weight_2d",
        "large_weight_1d",
    ],
)
@pytest.mark.parametrize("tasks", [1, 2])
def test_convolutions(convolution: nn.Module, tasks: int) -> None:
    convolution.double()
    dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(convolution)]
    x = torch.randn(3, 2, *([7] * dims), dtype=torch.float64)
    engine = Engine(convolution, batch_dim=0)
    out = convolution(x).flatten(1)
    losses = torch.stack([(out**2).sum(1), out.sin().sum(1)][:tasks], dim=1).squeeze(1)
    gramian = engine.compute_gramian(losses)
    expected = explicit_gramian(losses, trainable(convolution))
    torch.testing.assert_close(gramian, expected, **TOLERANCE)


def test_frozen_convolution_weight() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(27, 2)).double()
    model[0].weight.requires_grad_(False)
    engine = Engine(model, batch_dim=0)
    losses = model(torch.randn(4, 2, 5, 5, dtype=torch.float64)).pow(2).sum(1)
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


class TwoOutputs(nn.Module):
    """Two outputs from different nodes: the smallest parameter only reaches one of them."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
        self.weight = nn.Parameter(torch.randn(3, 3, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.scale, x @ self.weight


@pytest.mark.parametrize("batch_dim", [0, None])
def test_module_with_several_outputs(batch_dim: int | None) -> None:
    model = TwoOutputs()
    engine = Engine(model, batch_dim=batch_dim)
    a, b = model(torch.randn(4, 3, dtype=torch.float64))
    losses = (a.sin() + b.cos()).sum(1)
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


@pytest.mark.parametrize("architecture", ARCHITECTURES[:6], ids=repr)
def test_scalar_loss(architecture: Architecture) -> None:
    model = architecture.model
    engine = Engine(model, batch_dim=None)
    loss = architecture.losses(model, architecture.inputs).sum()
    gramian = engine.compute_gramian(loss)
    torch.testing.assert_close(gramian, explicit_gramian(loss, trainable(model)), **TOLERANCE)


@pytest.mark.parametrize("batch_dim", [0, None])
def test_float32_modules_replayed_through_torch_func(batch_dim: int | None) -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, groups=2),
        nn.GroupNorm(2, 4),
        nn.Flatten(),
        nn.Linear(36, 6),
        nn.LayerNorm(6),
        nn.Linear(6, 2),
    )
    engine = Engine(model, batch_dim=batch_dim)
    losses = model(torch.randn(8, 2, 5, 5) * 100).pow(2).sum(1)
    gramian = engine.compute_gramian(losses)
    expected = explicit_gramian(losses, trainable(model))
    torch.testing.assert_close(gramian, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_parameters_lists_each_parameter_of_the_modules_once() -> None:
    shared = torch.nn.Linear(3, 3)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.Linear(3, 1))
    engine = Engine(model, batch_dim=0)
    assert [id(p) for p in engine.parameters()] == [id(p) for p in model.parameters()]
    second = Engine(model[3], shared, batch_dim=None)
    assert [id(p) for p in second.parameters()] == [
        id(model[3].weight),
        id(model[3].bias),
        id(shared.weight),
        id(shared.bias),
    ]
