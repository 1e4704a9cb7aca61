"""Every error of the Engine: what it cannot compute exactly, it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _explicit_gramian import explicit_jacobian, trainable
from torch import Tensor, nn

from jdoptim.autogram import Engine


def _x(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def test_modules_must_be_modules() -> None:
    with pytest.raises(TypeError, match="modules"):
        Engine(torch.randn(2), batch_dim=0)  # type: ignore[arg-type]


def test_at_least_one_module() -> None:
    with pytest.raises(ValueError, match="modules"):
        Engine(batch_dim=0)


@pytest.mark.parametrize("batch_dim", [0.5, True, "0"])
def test_batch_dim_must_be_an_int_or_none(batch_dim: object) -> None:
    with pytest.raises(TypeError, match="batch_dim"):
        Engine(nn.Linear(2, 2), batch_dim=batch_dim)  # type: ignore[arg-type]


def test_batch_dim_is_required() -> None:
    with pytest.raises(TypeError, match="batch_dim"):
        Engine(nn.Linear(2, 2))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "norm",
    [
        nn.BatchNorm1d(3),
        nn.BatchNorm1d(3, affine=False),
        nn.BatchNorm1d(3, track_running_stats=False).eval(),
        nn.InstanceNorm1d(3, track_running_stats=True),
    ],
    ids=["train", "no_affine", "no_running_stats", "instance_norm_running_stats"],
)
def test_batch_statistics_are_refused_with_a_batch_dim(norm: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(2, 3), norm)
    with pytest.raises(ValueError, match="batch_dim=None"):
        Engine(model, batch_dim=0)


class _PlainRunningMean(nn.Module):
    """Running statistics kept as a plain attribute, not a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.running_mean = torch.zeros(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _PropertyRunningVar(nn.Module):
    """Running statistics exposed by a property of the class."""

    @property
    def running_var(self) -> torch.Tensor:
        return torch.ones(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("module", [_PlainRunningMean, _PropertyRunningVar])
def test_running_statistics_outside_buffers_are_refused_in_training(
    module: type[nn.Module],
) -> None:
    with pytest.raises(ValueError, match="running statistics"):
        Engine(nn.Sequential(nn.Linear(2, 3), module()), batch_dim=0)
    Engine(nn.Sequential(nn.Linear(2, 3), module()).eval(), batch_dim=0)


def test_batch_norm_switched_to_training_after_construction() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).double().eval()
    engine = Engine(model, batch_dim=0)
    model.train()
    losses = model(_x(4, 2)).sum(1)
    with pytest.raises(ValueError, match="GroupNorm"):
        engine.compute_gramian(losses)


def test_recurrent_module_is_refused_with_a_batch_dim() -> None:
    with pytest.raises(ValueError, match="batch_dim=None"):
        Engine(nn.LSTM(2, 3, batch_first=True), batch_dim=0)


@pytest.mark.parametrize("batch_dim", [2, -3])
def test_batch_dim_out_of_range(batch_dim: int) -> None:
    layer = nn.Linear(3, 2).double()
    engine = Engine(layer, batch_dim=batch_dim)
    with pytest.raises(ValueError, match="batch_dim"):
        engine.compute_gramian(layer(_x(4, 3)))


def test_scalar_output_with_a_batch_dim() -> None:
    layer = nn.Linear(3, 2).double()
    engine = Engine(layer, batch_dim=0)
    with pytest.raises(ValueError, match="batch_dim=None"):
        engine.compute_gramian(layer(_x(4, 3)).sum())


def test_output_must_be_a_tensor() -> None:
    engine = Engine(nn.Linear(3, 2), batch_dim=0)
    with pytest.raises(TypeError, match="output"):
        engine.compute_gramian([1.0, 2.0])  # type: ignore[arg-type]


def test_output_must_be_floating() -> None:
    engine = Engine(nn.Linear(3, 2), batch_dim=0)
    with pytest.raises(TypeError, match="output"):
        engine.compute_gramian(torch.ones(3, dtype=torch.long))


def test_output_must_require_grad() -> None:
    engine = Engine(nn.Linear(3, 2), batch_dim=0)
    with pytest.raises(ValueError, match="output"):
        engine.compute_gramian(torch.ones(3))


class ReadsChildWeight(nn.Module):
    """Uses the weight of a child directly in its own forward (the child is never called)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.layer.weight)


def test_parameter_used_outside_the_forward_of_its_module() -> None:
    model = ReadsChildWeight().double()
    engine = Engine(model, batch_dim=0)
    losses = model(_x(4, 3)).sum(1)
    with pytest.raises(ValueError, match=r"`layer\.weight`"):
        engine.compute_gramian(losses)


class BorrowsWeight(nn.Module):
    """A layer whose forward uses the weight of another, unrelated, layer."""

    def __init__(self, other: nn.Linear) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.other = [other]  # not a submodule

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x * self.scale, self.other[0].weight)


def test_parameter_used_inside_the_forward_of_a_module_that_does_not_own_it() -> None:
    first = nn.Linear(3, 3).double()
    second = BorrowsWeight(first).double()
    engine = Engine(first, second, batch_dim=0)
    losses = second(first(_x(4, 3))).sum(1)
    with pytest.raises(ValueError, match="does not own it"):
        engine.compute_gramian(losses)


def test_input_modified_in_place_after_the_call() -> None:
    layer = nn.Linear(3, 2).double()
    engine = Engine(layer, batch_dim=0)
    x = _x(4, 3)
    losses = layer(x).sum(1)
    x.add_(1.0)
    with pytest.raises(ValueError, match="modified in place"):
        engine.compute_gramian(losses)


def test_module_modifying_its_input_in_place() -> None:
    class AddsInPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.ones(3, dtype=torch.float64))

        def forward(self, x: Tensor) -> Tensor:
            return x.add_(self.bias)

    first, second = nn.Linear(3, 3).double(), AddsInPlace()
    engine = Engine(second, batch_dim=0)
    losses = second(first(_x(4, 3))).sum(1)
    with pytest.raises(ValueError, match="in place"):
        engine.compute_gramian(losses)


class NoisyLayer(nn.Module):
    """Dropout inside a module with parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x @ self.weight, 0.5, self.training)


@pytest.mark.parametrize("batch_dim", [0, None])
def test_randomness_inside_a_module_in_training_mode(batch_dim: int | None) -> None:
    model = NoisyLayer()
    engine = Engine(model, batch_dim=batch_dim)
    losses = model(_x(4, 3)).sum(1)
    with pytest.raises(ValueError, match="random"):
        engine.compute_gramian(losses)


def test_randomness_inside_a_module_in_eval_mode_is_fine() -> None:
    model = NoisyLayer().eval()
    engine = Engine(model, batch_dim=0)
    losses = model(_x(4, 3)).sum(1)
    assert engine.compute_gramian(losses).shape == (4, 4)


def test_removed_engine_records_nothing() -> None:
    layer = nn.Linear(3, 2)
    engine = Engine(layer, batch_dim=0)
    engine.remove()
    assert not layer._forward_hooks and not layer._forward_pre_hooks


class DataDependent(nn.Module):
    """Python control flow on the values of the input: impossible to vectorise over samples."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight if x.sum() > 0 else x @ self.weight.T


def test_module_that_cannot_be_vectorised_over_samples() -> None:
    model = DataDependent()
    engine = Engine(model, batch_dim=0)
    losses = model(_x(4, 3).abs()).sum(1)
    with pytest.raises(ValueError, match="batch_dim=None"):
        engine.compute_gramian(losses)
    engine = Engine(model, batch_dim=None)
    losses = model(_x(4, 3).abs()).sum(1)
    assert engine.compute_gramian(losses).shape == (4, 4)


def test_removed_engine_refuses_to_compute() -> None:
    layer = nn.Linear(3, 2).double()
    engine = Engine(layer, batch_dim=0)
    losses = layer(_x(4, 3)).sum(1)
    engine.remove()
    with pytest.raises(RuntimeError, match="removed"):
        engine.compute_gramian(losses)


def test_forward_made_before_the_engine_existed() -> None:
    layer = nn.Linear(3, 2).double()
    losses = layer(_x(4, 3)).sum(1)
    engine = Engine(layer, batch_dim=0)
    with pytest.raises(ValueError, match="after the `Engine` is created"):
        engine.compute_gramian(losses)


def test_second_gramian_of_the_same_forward() -> None:
    layer = nn.Linear(3, 2).double()
    engine = Engine(layer, batch_dim=0)
    losses = layer(_x(4, 3)).sum(1)
    engine.compute_gramian(losses)
    with pytest.raises(ValueError, match="each forward serves one"):
        engine.compute_gramian(losses)


class CentersTheBatch(nn.Module):
    """Subtracts the batch mean: the samples are not independent."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        h = x @ self.weight
        return h - h.mean(dim=0)


def test_module_mixing_the_samples_is_detected_at_replay() -> None:
    model = CentersTheBatch()
    engine = Engine(model, batch_dim=0)
    losses = model(_x(4, 3)).pow(2).sum(1)
    with pytest.raises(ValueError, match="mixes the samples"):
        engine.compute_gramian(losses)


def test_parameters_changed_between_forward_and_gramian() -> None:
    # A replayed module (layer norm has a closed form from the recorded input and gradients).
    model = nn.Sequential(nn.Linear(3, 3), nn.GroupNorm(1, 3)).double()
    engine = Engine(model, batch_dim=0)
    losses = model(_x(4, 3)).pow(2).sum(1)
    with torch.no_grad():
        model[1].bias.add_(1.0)  # not saved by autograd: only the replay can notice
    with pytest.raises(ValueError, match="changed between"):
        engine.compute_gramian(losses)


def _two_layers() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4))


def test_task_losses_as_many_as_the_samples_are_refused_with_a_batch_dim() -> None:
    # 4 task losses, each a mean over the batch of 4 samples: the shape [4] matches the batch
    # size, but loss i is not the loss of sample i.
    model = _two_layers()
    engine = Engine(model, batch_dim=0)
    task_losses = model(torch.randn(4, 3)).square().mean(dim=0)

    with pytest.raises(ValueError, match=r"not per-sample losses.*batch_dim=None"):
        engine.compute_gramian(task_losses)


def test_task_losses_along_another_batch_dim_are_refused() -> None:
    # [tasks, batch] losses where each task's row mixes the samples (a softmax over the batch).
    model = _two_layers()
    engine = Engine(model, batch_dim=1)
    out = model(torch.randn(4, 3))  # [4, 4]: the batch is dimension 0 of the layer outputs
    losses = out.softmax(dim=0).T  # [4 tasks, 4 samples], each mixing the whole batch

    with pytest.raises(ValueError, match="not per-sample losses"):
        engine.compute_gramian(losses)


@pytest.mark.parametrize("tasks", [1, 2, 4])
def test_per_sample_losses_as_many_as_the_tasks_keep_working(tasks: int) -> None:
    model = _two_layers()
    engine = Engine(model, batch_dim=0)
    out = model(torch.randn(4, 3))
    losses = out[:, :tasks].square()  # [4 samples, tasks]

    gramian = engine.compute_gramian(losses)

    jacobian = explicit_jacobian(losses, trainable(model))
    expected = (jacobian @ jacobian.T).reshape(4, tasks, 4, tasks).permute(0, 1, 3, 2)
    torch.testing.assert_close(gramian, expected, rtol=1e-5, atol=1e-5)


def test_non_finite_losses_give_a_non_finite_gramian_rather_than_a_batch_error() -> None:
    model = _two_layers()
    engine = Engine(model, batch_dim=0)
    out = model(torch.randn(4, 3))
    losses = out.square().sum(dim=1) * torch.tensor([float("inf"), 1.0, 1.0, 1.0])

    gramian = engine.compute_gramian(losses)

    assert not bool(torch.isfinite(gramian).all())


@pytest.mark.parametrize("finite_dependency", [True, False])
def test_loss_depending_on_other_samples_with_an_infinite_gradient(
    finite_dependency: bool,
) -> None:
    # The loss at index 0 reaches sample 2 with an infinite gradient; it is refused exactly
    # when it also reaches sample 1 with a finite non-zero one.
    layer = nn.Linear(2, 2).double()
    engine = Engine(layer, batch_dim=0)
    out = layer(_x(3, 2))
    first = out[0].sum() + (out[2] * float("inf")).sum()
    if finite_dependency:
        first = first + 2.0 * out[1].sum()
    losses = torch.stack([first, out[1].sum(), out[2].sum()])
    if finite_dependency:
        with pytest.raises(ValueError, match="per-sample"):
            engine.compute_gramian(losses)
    else:
        assert not bool(torch.isfinite(engine.compute_gramian(losses)).all())
