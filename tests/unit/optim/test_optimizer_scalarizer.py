"""Scalarizer mode: one ordinary backward of ``scalarizer(losses)``, and what the optimizer adds to
it (learned parameters in a group, FAMO's update after a closure step, state, errors)."""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer, NonFiniteGradientError
from jdoptim.aggregation import Mean as MeanAggregator
from jdoptim.aggregation import UPGrad
from jdoptim.autogram import Engine
from jdoptim.scalarization import (
    DWA,
    FAMO,
    IMTLL,
    STCH,
    UW,
    Constant,
    GeometricMean,
    Mean,
    Random,
    Scalarizer,
    Sum,
)


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def batch(step: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 5, generator=generator), torch.randn(16, 3, generator=generator)


def task_losses(model: nn.Module, step: int) -> Tensor:
    x, y = batch(step)
    return ((model(x) - y) ** 2).mean(dim=0)  # three positive losses


def flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def scalarizer_state(scalarizer: nn.Module) -> dict[str, Any]:
    return copy.deepcopy(dict(scalarizer.state_dict()))


def assert_same_state(actual: Any, expected: Any) -> None:
    if isinstance(expected, Tensor):
        assert isinstance(actual, Tensor) and torch.equal(actual, expected)
    elif isinstance(expected, dict):
        assert set(actual) == set(expected)
        for key in expected:
            assert_same_state(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same_state(a, e)
    else:
        assert actual == expected


def save_and_load(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


# -- the step is that of the scalarized loss ------------------------------------------------------


@pytest.mark.parametrize("method", ["step", "backward"])
def test_mean_is_plain_sgd_on_the_mean_loss(method: str) -> None:
    model, reference = make_model(), make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=Mean())
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(4):
        opt.zero_grad()
        if method == "step":
            opt.step(task_losses(model, step))
        else:
            opt.backward(task_losses(model, step))
            opt.step()
        sgd.zero_grad()
        task_losses(reference, step).mean().backward()
        sgd.step()
    assert torch.equal(flat(model), flat(reference))
    assert len(opt.param_groups) == 1  # Mean learns nothing: no group is added


@pytest.mark.parametrize(
    "make",
    [
        lambda: Sum(),
        lambda: Constant(torch.tensor([0.2, 1.0, 3.0])),
        lambda: GeometricMean(),
        lambda: STCH(mu=0.5),
        lambda: DWA(),
        lambda: FAMO(3),
    ],
)
def test_gradients_are_those_of_the_scalarized_loss(make: Callable[[], Scalarizer]) -> None:
    model, reference = make_model(), make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=make())
    opt.backward(task_losses(model, 0))
    make()(task_losses(reference, 0)).backward()
    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert expected.grad is not None and param.grad is not None
        torch.testing.assert_close(param.grad, expected.grad, rtol=1e-6, atol=1e-7)


def test_losses_of_different_shapes_are_concatenated() -> None:
    weight = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    opt = JacobianOptimizer(
        torch.optim.SGD([weight], lr=0.1), scalarizer=Constant(torch.tensor([1.0, 2.0, 3.0]))
    )
    opt.backward([weight[0] * 2, weight[1:] ** 2])  # a scalar and a [2]: three losses
    assert weight.grad is not None
    assert weight.grad.tolist() == [2.0, 8.0, 18.0]
    assert opt.last_weights[0] is not None
    assert opt.last_weights[0].tolist() == [1.0, 2.0, 3.0]


def test_random_draws_like_the_scalarizer_alone() -> None:
    model, reference = make_model(), make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=Random())
    torch.manual_seed(7)
    opt.backward(task_losses(model, 0))
    torch.manual_seed(7)
    Random()(task_losses(reference, 0)).backward()
    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert expected.grad is not None and param.grad is not None
        torch.testing.assert_close(param.grad, expected.grad, rtol=1e-6, atol=1e-7)


# -- last_weights, diagnostics --------------------------------------------------------------------


def test_last_weights_are_the_weights_used() -> None:
    model = make_model()
    uw = UW(3)
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.0, 1.0, -1.0]))
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=uw)
    opt.backward(task_losses(model, 0))
    expected = 0.5 * torch.exp(-uw.log_var.detach())
    assert len(opt.last_weights) == 2  # the model's group and the added group of log_var
    for weights in opt.last_weights:
        assert weights is not None
        torch.testing.assert_close(weights, expected)
    assert opt.diagnostics() == (None, None)


def test_weights_are_read_without_leaving_a_hook_on_the_losses() -> None:
    weight = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1), scalarizer=Mean())
    losses = torch.stack([weight[0] ** 2, 3 * weight[1]])
    opt.backward(losses, retain_graph=True)
    assert not losses._backward_hooks  # the hook that read ∂s/∂L is gone
    losses.backward(torch.tensor([1.0, 1.0]))  # a later backward of the user's own
    assert weight.grad is not None
    assert weight.grad.tolist() == [3.0, 4.5]  # [1, 1.5] from the step, [2, 3] added
    assert opt.last_weights[0] is not None
    assert opt.last_weights[0].tolist() == [0.5, 0.5]


class _OnlyItsParameter(Scalarizer):
    """A scalarizer whose value does not depend on the losses."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, values: Tensor, /) -> Tensor:
        return self.scale**2 + 0 * values.detach().sum()


def test_a_scalarizer_that_ignores_the_losses_is_refused_and_changes_nothing() -> None:
    weight = nn.Parameter(torch.tensor([1.0, 2.0]))
    scalarizer = _OnlyItsParameter()
    opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1), scalarizer=scalarizer)
    with pytest.raises(ValueError, match="`losses`"):  # no parameter of the model is reached
        opt.step(torch.stack([weight[0] ** 2, 3 * weight[1]]))
    assert weight.grad is None and scalarizer.scale.grad is None
    assert scalarizer.scale.item() == 2.0


def test_famo_weights_are_a_convex_combination() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=FAMO(3))
    losses = task_losses(model, 0)
    opt.backward(losses)
    (weights,) = opt.last_weights
    assert weights is not None
    shifted = losses.detach() + 1e-8
    z = torch.full((3,), 1 / 3)
    torch.testing.assert_close(weights, (z / shifted) / (z / shifted).sum())
    assert round(weights.sum().item(), 6) == 1.0


# -- learned parameters ---------------------------------------------------------------------------


def test_uw_learns_its_log_variances() -> None:
    theta = nn.Parameter(torch.tensor(0.0))
    uw = UW(2)
    opt = JacobianOptimizer(torch.optim.SGD([theta], lr=0.1), scalarizer=uw)
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1]["params"] == [uw.log_var]
    assert opt.param_groups[1]["lr"] == 0.1  # the optimizer's defaults
    for _ in range(400):
        opt.zero_grad()
        opt.step(torch.stack([(theta - 1) ** 2 + 2.0, (theta + 1) ** 2 + 0.5]))
    losses = torch.stack([(theta - 1) ** 2 + 2.0, (theta + 1) ** 2 + 0.5]).detach()
    # At the optimum of UW in s, s_i = log L_i.
    torch.testing.assert_close(uw.log_var.detach(), losses.log(), rtol=0, atol=1e-3)
    assert uw.log_var[0] > uw.log_var[1]


def test_imtll_learns_its_scales() -> None:
    theta = nn.Parameter(torch.tensor(0.0))
    imtll = IMTLL(2)
    opt = JacobianOptimizer(torch.optim.SGD([theta], lr=0.02), scalarizer=imtll)
    for _ in range(600):
        opt.zero_grad()
        opt.step(torch.stack([(theta - 1) ** 2 + 2.0, (theta + 1) ** 2 + 0.5]))
    losses = torch.stack([(theta - 1) ** 2 + 2.0, (theta + 1) ** 2 + 0.5]).detach()
    # At the optimum every scaled loss is 1: s_i = -log L_i.
    torch.testing.assert_close(imtll.log_scale.detach(), -losses.log(), rtol=0, atol=1e-3)


def test_learned_parameters_already_in_a_group_are_not_added_again() -> None:
    model = make_model()
    uw = UW(3)
    adam = torch.optim.AdamW(
        [
            {"params": model.parameters()},
            {"params": uw.parameters(), "weight_decay": 0.0, "lr": 0.1},
        ],
        lr=0.01,
    )
    opt = JacobianOptimizer(adam, scalarizer=uw)
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1]["weight_decay"] == 0.0
    # A second wrapper of the same optimizer finds them there too.
    again = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=uw)
    JacobianOptimizer(again.optimizer, scalarizer=uw)
    assert len(again.param_groups) == 2


def test_zero_grad_clears_the_learned_parameters() -> None:
    model = make_model()
    uw = UW(3)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=uw)
    opt.backward(task_losses(model, 0))
    assert uw.log_var.grad is not None
    expected = 0.5 * (1 - task_losses(model, 0).detach())  # at s = 0
    torch.testing.assert_close(uw.log_var.grad, expected)
    opt.zero_grad()
    assert uw.log_var.grad is None


@pytest.mark.parametrize("make", [lambda: UW(3), lambda: IMTLL(3)])
def test_lbfgs_refuses_learned_parameters_outside_its_group(
    make: Callable[[], Scalarizer],
) -> None:
    model = make_model()
    lbfgs = torch.optim.LBFGS(model.parameters())
    with pytest.raises(ValueError, match="one parameter group"):
        JacobianOptimizer(lbfgs, scalarizer=make())
    assert len(lbfgs.param_groups) == 1
    # Placed in the one group by the user, they are accepted.
    scalarizer = make()
    lbfgs = torch.optim.LBFGS([*model.parameters(), *scalarizer.parameters()])
    opt = JacobianOptimizer(lbfgs, scalarizer=scalarizer)
    assert len(opt.param_groups) == 1


# -- exclusive mode -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("aggregator", {"aggregator": UPGrad()}),
        ("weighting", {"weighting": UPGrad().gramian_weighting}),
        ("engine", {"engine": "engine"}),
        ("parallel_chunk_size", {"parallel_chunk_size": 2}),
    ],
)
def test_other_modes_arguments_are_refused(name: str, kwargs: dict[str, Any]) -> None:
    model = make_model()
    if name == "engine":
        kwargs = {"engine": Engine(model, batch_dim=0)}
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=f"`scalarizer` cannot be combined with `{name}`"):
        JacobianOptimizer(sgd, scalarizer=UW(3), **kwargs)
    assert len(sgd.param_groups) == 1  # nothing half-applied: no group added


def test_a_scalarizer_must_be_a_scalarizer() -> None:
    sgd = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(TypeError, match="`scalarizer` must be None or a"):
        JacobianOptimizer(sgd, scalarizer=MeanAggregator())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pass an instance: Mean"):
        JacobianOptimizer(sgd, scalarizer=Mean)  # type: ignore[arg-type]


def test_aggregator_keys_are_refused() -> None:
    model = make_model()
    sgd = torch.optim.SGD([{"params": model.parameters(), "aggregator": UPGrad()}], lr=0.1)
    with pytest.raises(ValueError, match=r"group 0 has an 'aggregator' key.*`scalarizer`"):
        JacobianOptimizer(sgd, scalarizer=Mean())
    first, second = nn.Linear(5, 8), nn.Linear(8, 3)
    opt = JacobianOptimizer(torch.optim.SGD(first.parameters(), lr=0.1), scalarizer=Mean())
    with pytest.raises(ValueError, match="`param_group` has an 'aggregator' key"):
        opt.add_param_group({"params": second.parameters(), "aggregator": UPGrad()})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": second.parameters()})
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("method", ["step", "backward"])
@pytest.mark.parametrize("argument", ["features", "grad_tensors"])
def test_per_loss_arguments_are_refused(method: str, argument: str) -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=Mean())
    x, y = batch(0)
    features = model[1](model[0](x))
    losses = ((model[2](features) - y) ** 2).mean(dim=0)
    value = features if argument == "features" else torch.ones(3)
    before = flat(model)
    with pytest.raises(ValueError, match=f"`{argument}` cannot be combined with `scalarizer`"):
        getattr(opt, method)(losses, **{argument: value})
    assert torch.equal(flat(model), before)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_accumulation_is_refused() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=Mean())
    with pytest.raises(ValueError, match="`aggregate=False` cannot be combined with `scalarizer`"):
        opt.backward(task_losses(model, 0), aggregate=False)
    with pytest.raises(ValueError, match="`aggregate` is not available in scalarizer mode"):
        opt.aggregate()
    assert all(p.grad is None for p in model.parameters())


def test_properties_of_scalarizer_mode() -> None:
    scalarizer = DWA()
    opt = JacobianOptimizer(
        torch.optim.SGD(make_model().parameters(), lr=0.1), scalarizer=scalarizer
    )
    assert opt.scalarizer is scalarizer
    assert opt.aggregator is None
    plain = JacobianOptimizer(torch.optim.SGD(make_model().parameters(), lr=0.1))
    assert plain.scalarizer is None
    assert isinstance(plain.aggregator, UPGrad)
    assert "scalarizer=DWA(temperature=2.0)" in repr(opt)
    assert "aggregator" not in repr(opt)


# -- closures: FAMO's update, LBFGS ---------------------------------------------------------------


def test_famo_with_a_closure_equals_the_hand_written_loop() -> None:
    model, reference = make_model(), make_model()
    famo, famo_reference = FAMO(3), FAMO(3)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=famo)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(5):

        def closure(step: int = step) -> Tensor:
            opt.zero_grad()
            return task_losses(model, step)

        returned = opt.step(closure)

        sgd.zero_grad()
        value = famo_reference(task_losses(reference, step))
        value.backward()
        sgd.step()
        with torch.no_grad():
            famo_reference.update(task_losses(reference, step))
        assert torch.equal(returned, value.detach())  # the step returns the scalarized loss
    assert torch.equal(flat(model), flat(reference))
    assert_same_state(scalarizer_state(famo), scalarizer_state(famo_reference))
    assert not torch.equal(famo.logits, torch.zeros(3))


def test_scalarizers_without_update_evaluate_the_closure_once() -> None:
    model = make_model()
    uw = UW(3)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=uw)
    calls = []

    def closure() -> Tensor:
        opt.zero_grad()
        calls.append(1)
        return task_losses(model, 0)

    returned = opt.step(closure)
    assert len(calls) == 1
    expected = UW(3)(task_losses(make_model(), 0)).detach()  # before the step, log_var = 0
    torch.testing.assert_close(returned, expected)
    assert uw.log_var.grad is not None  # the closure's losses were back-propagated


def test_a_scalarizer_on_another_device_is_refused() -> None:
    model = make_model()
    famo = FAMO(3).to("meta")
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=famo)
    with pytest.raises(
        ValueError, match=r"`scalarizer` must be on the device of the losses \(cpu\)"
    ):
        opt.step(task_losses(model, 0))
    assert all(p.grad is None for p in model.parameters())


class BadScalarizer(Scalarizer):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, values: Tensor, /) -> Tensor:
        if self.kind == "vector":
            return values * 2
        return values.detach().sum()


@pytest.mark.parametrize(
    ("kind", "match"), [("vector", "must return a 0-d tensor"), ("detached", "differentiable")]
)
def test_a_scalarizer_returning_a_bad_value_is_refused(kind: str, match: str) -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=BadScalarizer(kind)
    )
    with pytest.raises(ValueError, match=match):
        opt.step(task_losses(model, 0))
    assert all(p.grad is None for p in model.parameters())


def test_famo_closure_returning_none_is_refused_after_the_step() -> None:
    model = make_model()
    famo = FAMO(3)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=famo)

    def closure() -> None:
        opt.zero_grad()
        losses = task_losses(model, 0)
        if losses.requires_grad:  # not in the re-evaluation, under torch.no_grad()
            opt.backward(losses)

    before = flat(model)
    with pytest.raises(ValueError, match="`closure` must return the losses"):
        opt.step(closure)
    # The step stays applied; the logits are not updated.
    assert not torch.equal(flat(model), before)
    assert torch.equal(famo.logits, torch.zeros(3))


def test_famo_update_refusing_non_finite_losses_keeps_the_step() -> None:
    model = make_model()
    famo = FAMO(3)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=famo)
    calls = []

    def closure() -> Tensor:
        opt.zero_grad()
        calls.append(torch.is_grad_enabled())
        losses = task_losses(model, 0)
        return losses if len(calls) == 1 else losses * math.inf

    before = flat(model)
    with pytest.raises(ValueError, match=r"FAMO\.update"):
        opt.step(closure)
    assert calls == [True, False]  # the re-evaluation runs under torch.no_grad()
    assert not torch.equal(flat(model), before)
    assert torch.equal(famo.logits, torch.zeros(3))
    assert int(famo.adam_step) == 0


def test_lbfgs_stateful_scalarizers_see_only_the_first_evaluation() -> None:
    model = make_model()
    dwa = DWA()
    opt = JacobianOptimizer(torch.optim.LBFGS(model.parameters(), max_iter=5), scalarizer=dwa)
    evaluations: list[Tensor] = []

    def closure() -> Tensor:
        opt.zero_grad()
        losses = task_losses(model, 0)
        evaluations.append(losses.detach())
        return losses

    opt.step(closure)
    assert len(evaluations) > 2
    state = dwa.get_extra_state()
    assert state["count"].item() == 1
    assert torch.equal(state["sum"], evaluations[0])


def test_lbfgs_famo_remembers_the_losses_at_the_start_of_the_step() -> None:
    model = make_model()
    famo = FAMO(3)
    opt = JacobianOptimizer(torch.optim.LBFGS(model.parameters(), max_iter=4), scalarizer=famo)
    evaluations: list[Tensor] = []

    def closure() -> Tensor:
        opt.zero_grad()
        losses = task_losses(model, 0)
        evaluations.append(losses.detach())
        return losses

    opt.step(closure)
    # The optimization evaluations, then the re-evaluation after the step.
    assert len(evaluations) > 3
    reference = FAMO(3)
    reference(evaluations[0])
    reference.update(evaluations[-1])
    assert_same_state(scalarizer_state(famo), scalarizer_state(reference))


# -- failure safety -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: FAMO(3), lambda: DWA()])
def test_non_finite_losses_leave_the_scalarizer_state_untouched(
    make: Callable[[], Scalarizer],
) -> None:
    model = make_model()
    scalarizer = make()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=scalarizer)
    opt.step(task_losses(model, 0))
    opt.zero_grad()
    before_state, before_params = scalarizer_state(scalarizer), flat(model)
    losses = task_losses(model, 1)
    with pytest.raises(NonFiniteGradientError):
        opt.step(losses * torch.tensor([1.0, math.inf, 1.0]))
    assert_same_state(scalarizer_state(scalarizer), before_state)
    assert torch.equal(flat(model), before_params)
    assert all(p.grad is None for p in model.parameters())


def test_losses_of_no_parameter_of_the_optimizer_are_refused() -> None:
    model, other = make_model(), make_model()
    famo = FAMO(3)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=famo)
    opt.step(task_losses(model, 0))
    before = scalarizer_state(famo)
    grads = [p.grad for p in model.parameters()]
    with pytest.raises(ValueError, match="depend on none of them"):
        opt.backward(task_losses(other, 1))
    assert_same_state(scalarizer_state(famo), before)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    assert all(p.grad is None for p in other.parameters())


class FailingSGD(torch.optim.SGD):
    """An SGD whose step evaluates the closure, then fails."""

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        closure()
        raise RuntimeError("the inner step failed")


@pytest.mark.parametrize("make", [lambda: FAMO(3), lambda: DWA(), lambda: UW(3)])
def test_a_failing_inner_step_restores_the_scalarizer(make: Callable[[], Scalarizer]) -> None:
    model = make_model()
    scalarizer = make()
    opt = JacobianOptimizer(FailingSGD(model.parameters(), lr=0.1), scalarizer=scalarizer)
    with torch.no_grad():
        scalarizer(task_losses(model, 5))  # some state to keep (FAMO, DWA)
    before = scalarizer_state(scalarizer)

    def closure() -> Tensor:
        return task_losses(model, 0)

    with pytest.raises(RuntimeError, match="the inner step failed"):
        opt.step(closure)
    assert_same_state(scalarizer_state(scalarizer), before)
    assert all(p.grad is None for group in opt.param_groups for p in group["params"])


# -- state_dict, pickling -------------------------------------------------------------------------


def _make_run(kind: str) -> tuple[nn.Module, JacobianOptimizer]:
    model = make_model()
    if kind == "UW":
        opt = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), scalarizer=UW(3))
    elif kind == "DWA":
        opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), scalarizer=DWA())
    else:
        opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), scalarizer=FAMO(3))
    return model, opt


def _train(
    model: nn.Module, opt: JacobianOptimizer, steps: range, skip_first_step: bool = False
) -> None:
    """Per step: zero_grad, step(losses), then FAMO's update (without a closure, by hand) and
    DWA's end of epoch every 2 steps. ``skip_first_step`` resumes from a checkpoint taken after
    the first step's ``step(losses)``: mid-epoch for DWA, between FAMO's forward and update."""
    scalarizer = opt.scalarizer
    for step in steps:
        if step > steps.start or not skip_first_step:
            opt.zero_grad()
            opt.step(task_losses(model, step))
        if isinstance(scalarizer, FAMO):
            with torch.no_grad():
                scalarizer.update(task_losses(model, step))
        if isinstance(scalarizer, DWA) and step % 2 == 1:
            scalarizer.step()


@pytest.mark.parametrize("kind", ["UW", "DWA", "FAMO"])
def test_resumed_run_continues_bit_for_bit(kind: str) -> None:
    model, opt = _make_run(kind)
    _train(model, opt, range(7))

    interrupted, interrupted_opt = _make_run(kind)
    _train(interrupted, interrupted_opt, range(2))
    interrupted_opt.zero_grad()
    interrupted_opt.step(task_losses(interrupted, 2))  # DWA: mid-epoch; FAMO: before its update
    checkpoint = save_and_load(
        {"model": interrupted.state_dict(), "optimizer": interrupted_opt.state_dict()}
    )
    assert "scalarizer" in checkpoint["optimizer"]["jdoptim"]
    del interrupted, interrupted_opt

    resumed, resumed_opt = _make_run(kind)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    _train(resumed, resumed_opt, range(2, 7), skip_first_step=True)

    assert torch.equal(flat(resumed), flat(model))
    assert opt.scalarizer is not None and resumed_opt.scalarizer is not None
    assert_same_state(scalarizer_state(resumed_opt.scalarizer), scalarizer_state(opt.scalarizer))


def test_state_dicts_of_the_other_mode_are_refused() -> None:
    model = make_model()
    scalarized = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=DWA())
    aggregated = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.2), UPGrad())
    scalarized.step(task_losses(model, 0))
    with pytest.raises(ValueError, match="saved by a JacobianOptimizer with a scalarizer"):
        aggregated.load_state_dict(save_and_load(scalarized.state_dict()))
    assert aggregated.param_groups[0]["lr"] == 0.2
    before = scalarizer_state(scalarized.scalarizer)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="saved by a JacobianOptimizer without a scalarizer"):
        scalarized.load_state_dict(save_and_load(aggregated.state_dict()))
    assert scalarized.param_groups[0]["lr"] == 0.1
    assert_same_state(scalarizer_state(scalarized.scalarizer), before)  # type: ignore[arg-type]


def test_pickling_keeps_the_scalarizer() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=UW(3))
    opt.step(task_losses(model, 0))
    copied = pickle.loads(pickle.dumps(opt))
    assert isinstance(copied.scalarizer, UW)
    assert copied.aggregator is None
    assert torch.equal(copied.scalarizer.log_var, opt.scalarizer.log_var)  # type: ignore[union-attr]
    assert len(copied.param_groups) == 2
    assert repr(copied) == repr(opt)


# -- mixed precision ------------------------------------------------------------------------------


def test_grad_scaler_recipe_equals_the_plain_step() -> None:
    model, reference = make_model(), make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scalarizer=UW(3))
    reference_opt = JacobianOptimizer(
        torch.optim.SGD(reference.parameters(), lr=0.1), scalarizer=UW(3)
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    for step in range(3):
        opt.zero_grad()
        assert opt.scalarizer is not None
        scaler.scale(opt.scalarizer(task_losses(model, step))).backward()
        scaler.step(opt)
        scaler.update()
        reference_opt.zero_grad()
        reference_opt.step(task_losses(reference, step))
    torch.testing.assert_close(flat(model), flat(reference))
