"""JacobianOptimizer in real training set-ups: schedulers, GradScaler, closures, LBFGS, hooks."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer, NonFiniteGradientError
from jdoptim.aggregation import Constant, Mean, UPGrad


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def make_data(step: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 5, generator=generator), torch.randn(16, 3, generator=generator)


def task_losses(model: nn.Module, step: int = 0) -> Tensor:
    x, y = make_data(step)
    return ((model(x) - y) ** 2).mean(dim=0)


def copies(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_wrapper_shares_the_wrapped_optimizer_attributes() -> None:
    model = make_model()
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    opt = JacobianOptimizer(adam)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is adam.param_groups
    assert opt.state is adam.state
    assert opt.defaults is adam.defaults
    opt.step(task_losses(model))
    assert len(adam.state) == 4  # Adam's moments live in the shared state


def test_step_lr_schedules_the_wrapper() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for step in range(3):
            opt.zero_grad()
            opt.step(task_losses(model, step))
            scheduler.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 8)


def test_one_cycle_lr_schedules_the_wrapper_like_the_plain_optimizer() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=6)
    reference = make_model()
    reference_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    reference_scheduler = torch.optim.lr_scheduler.OneCycleLR(
        reference_opt, max_lr=1.0, total_steps=6
    )
    lrs, reference_lrs = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(6):
            opt.zero_grad()
            opt.step(task_losses(model, step))
            lrs.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
            scheduler.step()
            reference_opt.zero_grad()
            task_losses(reference, step).sum().backward()
            reference_opt.step()
            reference_lrs.append(
                (reference_opt.param_groups[0]["lr"], reference_opt.param_groups[0]["momentum"])
            )
            reference_scheduler.step()
    assert lrs == reference_lrs
    assert len(set(lrs)) == 6


def test_step_hooks_registered_on_the_wrapper_fire() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    calls = []
    opt.register_step_pre_hook(lambda optimizer, args, kwargs: calls.append(("pre", optimizer)))
    opt.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(("post", optimizer)))
    opt.step(task_losses(model))
    assert calls == [("pre", opt), ("post", opt)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grad_scaler_with_cpu_autocast(dtype: torch.dtype) -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    reference = make_model()
    reference_opt = JacobianOptimizer(torch.optim.SGD(reference.parameters(), lr=0.1), UPGrad())
    x, y = make_data()
    for _ in range(2):
        with torch.autocast("cpu", dtype=dtype):
            losses = ((model(x).float() - y) ** 2).mean(dim=0)
        opt.zero_grad()
        opt.backward(scaler.scale(losses))
        scaler.step(opt)
        scaler.update()

        with torch.autocast("cpu", dtype=dtype):
            reference_losses = ((reference(x).float() - y) ** 2).mean(dim=0)
        reference_opt.zero_grad()
        reference_opt.step(reference_losses)
    assert scaler.get_scale() == 1024.0
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grad_scaler_skips_an_overflowed_step(dtype: torch.dtype) -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=0.1), UPGrad())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = copies(model)
    x, y = make_data()
    with torch.autocast("cpu", dtype=dtype):
        losses = ((model(x).float() - y) ** 2).mean(dim=0)
    losses = losses * torch.tensor([1.0, float("inf"), 1.0])  # the second loss overflowed
    opt.zero_grad()
    opt.backward(scaler.scale(losses))
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters())
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 512.0
    assert len(opt.state) == 0  # Adam never stepped
    for actual, expected in zip(model.parameters(), before):
        assert torch.equal(actual, expected)

    # The next, finite step goes through.
    with torch.autocast("cpu", dtype=dtype):
        losses = ((model(x).float() - y) ** 2).mean(dim=0)
    opt.zero_grad()
    opt.backward(scaler.scale(losses))
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(next(model.parameters()), before[0])


def test_non_finite_gradients_without_scaler_are_refused() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=0.1), UPGrad())
    before = copies(model)
    losses = task_losses(model) * torch.tensor([1.0, float("nan"), 1.0])
    with pytest.raises(NonFiniteGradientError, match="GradScaler"):
        opt.step(losses)
    assert all(p.grad is None for p in model.parameters())
    assert len(opt.state) == 0
    for actual, expected in zip(model.parameters(), before):
        assert torch.equal(actual, expected)


def test_float16_update_that_overflows_is_refused() -> None:
    weight = nn.Parameter(torch.ones(2, dtype=torch.float16))
    opt = JacobianOptimizer(torch.optim.SGD([weight], lr=1e-9), Constant(torch.tensor([3.0, 3.0])))
    # Rows and weights are finite in float16, but w @ J = 3 * 40000 + 3 * 40000 is not.
    losses = torch.stack([(weight * 40000).sum(), (weight * 40000).sum()])
    with pytest.raises(NonFiniteGradientError):
        opt.step(losses)
    assert torch.equal(weight, torch.ones(2, dtype=torch.float16))
    assert weight.grad is None


def test_step_refuses_non_finite_gradients_written_elsewhere() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    before = copies(model)
    (task_losses(model).sum() * float("inf")).backward()
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    assert isinstance(NonFiniteGradientError("x"), ValueError)
    for actual, expected in zip(model.parameters(), before):
        assert torch.equal(actual, expected)


def test_lbfgs_with_a_closure_returning_the_losses() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4), Mean())
    reference = make_model()
    reference_opt = torch.optim.LBFGS(reference.parameters(), lr=0.5, max_iter=4)
    evaluations = 0

    def closure() -> Tensor:
        nonlocal evaluations
        evaluations += 1
        opt.zero_grad()
        return task_losses(model)

    def reference_closure() -> Tensor:
        reference_opt.zero_grad()
        loss = task_losses(reference).mean()
        loss.backward()
        return loss

    initial = task_losses(model).sum().item()
    for _ in range(3):
        returned = opt.step(closure=closure)
        reference_opt.step(reference_closure)
    assert evaluations > 3  # LBFGS re-evaluated the closure within a step
    assert returned.requires_grad is False
    assert task_losses(model).sum().item() < initial
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-5)


def test_closure_passed_positionally_like_torch() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4), UPGrad())
    reference = make_model()
    reference_opt = JacobianOptimizer(
        torch.optim.LBFGS(reference.parameters(), lr=0.5, max_iter=4), UPGrad()
    )

    def closure() -> Tensor:
        opt.zero_grad()
        return task_losses(model)

    def reference_closure() -> Tensor:
        reference_opt.zero_grad()
        return task_losses(reference)

    for _ in range(2):
        returned = opt.step(closure)  # torch's `optimizer.step(closure)`
        expected = reference_opt.step(closure=reference_closure)
        assert torch.equal(returned, expected)
    for actual, wanted in zip(model.parameters(), reference.parameters()):
        assert torch.equal(actual, wanted)


def test_lbfgs_failure_inside_a_later_closure_call_changes_nothing() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4), UPGrad())
    opt.step(closure=lambda: task_losses(model))
    before = copies(model)
    state_before = {k: v for k, v in opt.state[next(model.parameters())].items()}
    evaluations = 0

    def failing_closure() -> Tensor:
        nonlocal evaluations
        evaluations += 1
        if evaluations == 3:
            raise RuntimeError("data loader broke")
        opt.zero_grad()
        return task_losses(model, evaluations)

    with pytest.raises(RuntimeError, match="data loader broke"):
        opt.step(closure=failing_closure)
    for actual, expected in zip(model.parameters(), before):
        assert torch.equal(actual, expected)
    state = opt.state[next(model.parameters())]
    assert state["n_iter"] == state_before["n_iter"]
    assert torch.equal(state["d"], state_before["d"])


def test_closure_returning_none_uses_the_gradients_it_left() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    reference = make_model()
    reference_opt = JacobianOptimizer(torch.optim.SGD(reference.parameters(), lr=0.1), UPGrad())

    def closure() -> None:
        opt.zero_grad()
        opt.backward(task_losses(model))

    assert opt.step(closure=closure) is None
    reference_opt.step(task_losses(reference))
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.equal(actual, expected)


def test_closure_that_already_backpropagated_its_losses_is_explained() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    before = copies(model)

    def closure() -> Tensor:  # torch's usual closure: backward, then return the loss
        opt.zero_grad()
        loss = task_losses(model).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="`closure` returned losses whose graph"):
        opt.step(closure=closure)
    for actual, expected in zip(model.parameters(), before):
        assert torch.equal(actual, expected)


def test_losses_and_closure_together_are_rejected() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="closure"):
        opt.step(task_losses(model), closure=lambda: None)


def test_zero_grad_clears_jac_too() -> None:
    from jdoptim.autojac import backward

    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    backward(task_losses(model), inputs=list(model.parameters()))
    opt.backward(task_losses(model))
    assert all(hasattr(p, "jac") and p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(not hasattr(p, "jac") and p.grad is None for p in model.parameters())
