"""Gradient accumulation: Jacobians of micro-batches summed, aggregated once, equal to the full
batch; the 1/k convention; GradScaler and gradient clipping see the aggregated gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import MGDA, Mean, UPGrad
from jdoptim.autogram import Engine

K = 4  # micro-batches


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def batch() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=generator, dtype=torch.float64)
    return x, torch.randn(16, 3, generator=generator, dtype=torch.float64)


def task_losses(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return ((model(x) - y) ** 2).mean(dim=0)  # one loss per output: m = 3


def full_batch_step(aggregator: nn.Module, steps: int = 2) -> list[Tensor]:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator)
    x, y = batch()
    for _ in range(steps):
        opt.zero_grad()
        opt.step(task_losses(model, x, y))
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("aggregator", [UPGrad(), MGDA(), Mean()], ids=str)
def test_accumulated_micro_batches_equal_the_full_batch(aggregator: nn.Module) -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), aggregator)
    x, y = batch()
    for _ in range(2):
        opt.zero_grad()
        for xs, ys in zip(x.chunk(K), y.chunk(K), strict=True):
            # Each micro-batch's mean loss divided by k: the sum is the full batch's mean loss.
            opt.backward(task_losses(model, xs, ys) / K, aggregate=False)
        assert all(p.grad is None for p in model.parameters())
        assert all(p.jac.shape == (3, *p.shape) for p in model.parameters())
        opt.aggregate()
        assert not any(hasattr(p, "jac") for p in model.parameters())
        opt.step()
    for param, expected in zip(model.parameters(), full_batch_step(aggregator), strict=True):
        torch.testing.assert_close(param, expected, rtol=1e-10, atol=1e-12)


def test_accumulation_differs_from_summing_aggregated_micro_batches() -> None:
    # The documented A(J1) + A(J2) of two plain backward calls is not A(J1 + J2) for UPGrad.
    model = make_model()
    x, y = batch()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True):
        opt.backward(task_losses(model, xs, ys) / 2)
    summed = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True):
        opt.backward(task_losses(model, xs, ys) / 2, aggregate=False)
    opt.aggregate()
    assert any(not torch.allclose(a, p.grad) for a, p in zip(summed, model.parameters()))


def test_multi_task_mode_accumulates_the_shared_jacobian_and_task_gradients() -> None:
    torch.manual_seed(0)
    trunk = nn.Linear(5, 4).double()
    heads = [nn.Linear(4, 1).double() for _ in range(2)]
    params = [*trunk.parameters(), *heads[0].parameters(), *heads[1].parameters()]
    x, y = batch()

    def losses(xs: Tensor, ys: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = trunk(xs).tanh()
        return features, [((h(features)[:, 0] - ys[:, i]) ** 2).mean() for i, h in enumerate(heads)]

    opt = JacobianOptimizer(torch.optim.SGD(params, lr=0.1), UPGrad())
    features, full = losses(x, y)
    opt.backward(full, features=features)
    expected = [p.grad.clone() for p in params]
    opt.zero_grad()
    for xs, ys in zip(x.chunk(K), y.chunk(K), strict=True):
        features, micro = losses(xs, ys)
        opt.backward([loss / K for loss in micro], features=features, aggregate=False)
    assert all(hasattr(p, "jac") for p in trunk.parameters())
    assert not any(hasattr(p, "jac") for h in heads for p in h.parameters())
    opt.aggregate()
    for param, grad in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)


def test_grad_scaler_and_clipping_see_the_aggregated_gradients() -> None:
    x, y = batch()
    results = []
    for accumulate in (False, True):
        model = make_model().float()
        opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        for _ in range(2):
            opt.zero_grad()
            if accumulate:
                for xs, ys in zip(x.float().chunk(K), y.float().chunk(K), strict=True):
                    opt.backward(scaler.scale(task_losses(model, xs, ys) / K), aggregate=False)
                opt.aggregate()
            else:
                opt.backward(scaler.scale(task_losses(model, x.float(), y.float())))
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)
            assert norm > 0.05  # clipping is active, on the aggregated .grad
            scaler.step(opt)
            scaler.update()
        results.append([p.detach().clone() for p in model.parameters()])
    for accumulated, full in zip(*results, strict=True):
        torch.testing.assert_close(accumulated, full, rtol=1e-5, atol=1e-6)


def test_step_and_backward_refuse_a_pending_accumulation() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    x, y = batch()
    opt.backward(task_losses(model, x, y), aggregate=False)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"opt.aggregate\(\)"):
        opt.step()
    with pytest.raises(ValueError, match=r"opt.aggregate\(\)"):
        opt.backward(task_losses(model, x, y))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    opt.zero_grad()  # drops the accumulation
    opt.step(task_losses(model, x, y))


def test_aggregate_without_accumulation_is_refused() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    with pytest.raises(ValueError, match="aggregate=False"):
        opt.aggregate()


def test_micro_batches_with_different_numbers_of_losses_are_refused() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    x, y = batch()
    opt.backward(task_losses(model, x, y), aggregate=False)
    jacobians = [p.jac.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="as many objectives"):
        opt.backward(task_losses(model, x, y)[:2], aggregate=False)
    assert all(torch.equal(a, p.jac) for a, p in zip(jacobians, model.parameters(), strict=True))


def test_step_refuses_aggregate_false() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    x, y = batch()
    with pytest.raises(ValueError, match="`aggregate`"):
        opt.step(task_losses(model, x, y), aggregate=False)


def test_gramian_mode_refuses_accumulation() -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), engine=Engine(model, batch_dim=0)
    )
    x, y = batch()
    losses = ((model(x) - y) ** 2).mean(dim=1)
    with pytest.raises(ValueError, match="aggregate=False"):
        opt.backward(losses, aggregate=False)
    with pytest.raises(ValueError, match="Gramian mode"):
        opt.aggregate()


def test_aggregate_must_be_a_bool() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
    x, y = batch()
    with pytest.raises(TypeError, match="`aggregate`"):
        opt.backward(task_losses(model, x, y), aggregate=0)
