"""Smaller promises of JacobianOptimizer: hooks, rollbacks, copies, non-finite Gramians."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer, NonFiniteGradientError
from jdoptim.aggregation import Constant, Mean, NashMTL, UPGrad
from jdoptim.autogram import Engine


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def task_losses(model: nn.Module, step: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(16, 5, generator=generator), torch.randn(16, 3, generator=generator)
    return ((model(x) - y) ** 2).mean(dim=0)


def test_hooks_on_the_aggregator_and_its_weighting_fire_on_every_step() -> None:
    model = make_model()
    aggregator = UPGrad()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator)
    seen = []
    aggregator.register_forward_hook(lambda module, args, output: seen.append("aggregator"))
    aggregator.gramian_weighting.register_forward_hook(
        lambda module, args, output: seen.append(output)
    )
    for step in range(2):
        opt.zero_grad()
        opt.step(task_losses(model, step))
    assert seen[1] == "aggregator" and seen[3] == "aggregator"
    assert torch.equal(seen[2], opt.last_weights[0])


def test_a_failing_group_rolls_back_the_state_of_an_earlier_stateful_aggregator() -> None:
    model = make_model()
    nash = NashMTL(n_tasks=3)
    opt = JacobianOptimizer(
        torch.optim.SGD(
            [
                {"params": model[0].parameters(), "aggregator": nash},
                {"params": model[2].parameters(), "aggregator": Constant(torch.ones(2))},
            ],
            lr=0.1,
        )
    )
    with pytest.raises(ValueError, match="parameter group 1"):
        opt.step(task_losses(model))
    assert int(nash.step) == 0
    assert torch.equal(nash.weights, torch.ones(3, dtype=torch.float64))
    assert all(p.grad is None for p in model.parameters())


def test_a_refused_step_rolls_back_the_aggregator_state() -> None:
    weight = nn.Parameter(torch.tensor([1.0, 2.0]))
    nash = NashMTL(n_tasks=2)
    opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1), nash)
    other = nn.Parameter(torch.ones(1))
    opt.add_param_group({"params": [other], "aggregator": Mean()})
    # The first group is finite; the second overflows, so the whole step is refused.
    losses = [weight.pow(2).sum() + other.sum() * float("inf"), weight.sum() + other.sum()]
    with pytest.raises(NonFiniteGradientError):
        opt.step(losses)
    assert int(nash.step) == 0
    assert weight.grad is None and other.grad is None
    assert torch.equal(weight, torch.tensor([1.0, 2.0]))


def test_non_finite_jacobian_in_multi_task_mode_gives_nan_gradients() -> None:
    trunk, head1, head2 = nn.Linear(4, 3), nn.Linear(3, 1), nn.Linear(3, 1)
    params = [*trunk.parameters(), *head1.parameters(), *head2.parameters()]
    opt = JacobianOptimizer(torch.optim.SGD(params, lr=0.1), UPGrad())
    features = trunk(torch.randn(8, 4))
    losses = [head1(features).mean() * float("inf"), head2(features).mean()]
    opt.backward(losses, features=features)
    assert torch.isnan(trunk.weight.grad).all()
    assert opt.last_weights == (None,)
    with pytest.raises(NonFiniteGradientError):
        opt.step()


def test_non_finite_gramian_in_gramian_mode_gives_nan_gradients() -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), UPGrad(), engine=Engine(model, batch_dim=0)
    )
    x = torch.randn(4, 5)
    losses = model(x).sum(dim=1) * torch.tensor([1.0, float("inf"), 1.0, 1.0])
    opt.backward(losses)
    assert torch.isnan(opt.last_weights[0]).all()
    assert all(torch.isnan(p.grad).any() for p in model.parameters())


def test_gramian_mode_refuses_an_overflow_outside_the_engine() -> None:
    model = make_model()
    scale = nn.Parameter(torch.ones(1))  # optimised, but outside the engine's modules
    opt = JacobianOptimizer(
        torch.optim.SGD([*model.parameters(), scale], lr=0.1), engine=Engine(model, batch_dim=0)
    )
    before = [p.detach().clone() for p in [*model.parameters(), scale]]
    x = torch.randn(4, 5)
    losses = model(x).sum(dim=1) + scale * torch.full((4,), 1e38) * 10  # d/dscale overflows
    with pytest.raises(NonFiniteGradientError):
        opt.step(losses)  # the engine's Gramian is finite: it does not cover `scale`
    for param, value in zip([*model.parameters(), scale], before):
        assert torch.equal(param, value)
        assert param.grad is None


def test_zero_grad_without_set_to_none_zeroes_jac_in_place() -> None:
    from jdoptim.autojac import backward

    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    backward(task_losses(model), inputs=list(model.parameters()))
    opt.backward(task_losses(model))
    opt.zero_grad(set_to_none=False)
    for param in model.parameters():
        assert torch.equal(param.jac, torch.zeros(3, *param.shape))
        assert torch.equal(param.grad, torch.zeros_like(param))


def test_copies_and_pickles_are_independent_optimizers() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), NashMTL(n_tasks=3))
    opt.step(task_losses(model))
    clone = copy.deepcopy(opt)
    assert clone.param_groups is clone.optimizer.param_groups
    assert int(clone.aggregator.step) == 1
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.state_dict()["jdoptim"]["aggregator"]["step"] == 1


def test_a_failing_wrapped_step_leaves_the_gradients_and_aggregator_state() -> None:
    class Refusing(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[no-untyped-def]
            raise RuntimeError("the wrapped optimizer refused")

    model = make_model()
    aggregator = NashMTL(n_tasks=3, update_weights_every=1)
    opt = JacobianOptimizer(Refusing(model.parameters(), lr=0.1), aggregator)
    opt.backward(task_losses(model, 0))
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in aggregator.state_dict().items()}
    with pytest.raises(RuntimeError, match="refused"):
        opt.step(task_losses(model, 1))
    for param, grad in zip(model.parameters(), grads):
        assert torch.equal(param.grad, grad)  # not grad + the aggregated Jacobian of step 1
    for key, value in aggregator.state_dict().items():
        assert torch.equal(value, state[key])


def test_custom_optimizer_closure_failure_is_undone() -> None:
    class TwoEvaluations(torch.optim.Optimizer):
        """Moves, then re-evaluates the closure (like sharpness-aware minimisation)."""

        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

        @torch.no_grad()
        def step(self, closure):
            with torch.enable_grad():
                closure()
            for group in self.param_groups:
                for param in group["params"]:
                    param.add_(param.grad, alpha=-group["lr"])
            with torch.enable_grad():
                return closure()

    model = make_model()
    opt = JacobianOptimizer(TwoEvaluations(model.parameters()), UPGrad())
    before = [p.detach().clone() for p in model.parameters()]
    calls = 0

    def closure() -> Tensor:
        nonlocal calls
        calls += 1
        opt.zero_grad()
        if calls == 2:
            raise RuntimeError("data loader broke")
        return task_losses(model)

    with pytest.raises(RuntimeError, match="data loader broke"):
        opt.step(closure=closure)
    assert calls == 2
    for actual, expected in zip(model.parameters(), before):
        assert torch.equal(actual, expected)


def test_grad_scaler_with_unscale_and_clipping_before_the_step() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    reference = make_model()
    reference_opt = JacobianOptimizer(torch.optim.SGD(reference.parameters(), lr=0.1), UPGrad())

    opt.backward(scaler.scale(task_losses(model)))
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
    scaler.step(opt)
    scaler.update()

    reference_opt.backward(task_losses(reference))
    torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm=0.5)
    reference_opt.step()
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-6)


def test_diagnostics_in_gramian_mode_come_from_the_engine_gramian() -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), UPGrad(), engine=Engine(model, batch_dim=0)
    )
    reference = make_model()
    reference_opt = JacobianOptimizer(torch.optim.SGD(reference.parameters(), lr=0.1), UPGrad())
    x, y = torch.randn(6, 5), torch.randn(6, 3)
    opt.backward(((model(x) - y) ** 2).mean(dim=1))
    reference_opt.backward(((reference(x) - y) ** 2).mean(dim=1))
    (diagnostics,) = opt.diagnostics()
    (expected,) = reference_opt.diagnostics()
    assert diagnostics.n_conflicting_pairs == expected.n_conflicting_pairs
    assert torch.allclose(diagnostics.cosine_similarities, expected.cosine_similarities, atol=1e-5)
