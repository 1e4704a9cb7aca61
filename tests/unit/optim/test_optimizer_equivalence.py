"""JacobianOptimizer gives the same parameters as the low-level calls written by hand."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import Constant, Mean, UPGrad, UPGradWeighting
from jdoptim.autogram import Engine
from jdoptim.autojac import backward, jac_to_grad, mtl_backward


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def make_data(step: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 5, generator=generator), torch.randn(16, 3, generator=generator)


def task_losses(model: nn.Module, step: int) -> Tensor:
    x, y = make_data(step)
    return ((model(x) - y) ** 2).mean(dim=0)  # one loss per output: 3 tasks


OPTIMIZERS = {
    "SGD": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "Adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "AdamW": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_equals_backward_jac_to_grad_and_step(name: str) -> None:
    model = make_model()
    opt = JacobianOptimizer(OPTIMIZERS[name](model.parameters()), UPGrad())
    reference = make_model()
    reference_opt = OPTIMIZERS[name](reference.parameters())
    params = list(reference.parameters())

    for step in range(3):
        opt.zero_grad()
        opt.step(task_losses(model, step))

        reference_opt.zero_grad()
        backward(task_losses(reference, step), inputs=params)
        weights = jac_to_grad(params, UPGrad())
        reference_opt.step()
        assert torch.allclose(opt.last_weights[0], weights)

    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-6, rtol=1e-5)
    assert not torch.equal(next(model.parameters()), next(make_model().parameters()))


def test_with_mean_it_is_the_gradient_step_of_the_mean_loss() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Mean())
    reference = make_model()
    reference_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(3):
        opt.zero_grad()
        opt.step(task_losses(model, step))
        reference_opt.zero_grad()
        task_losses(reference, step).mean().backward()
        reference_opt.step()
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-6)


def test_backward_accumulates_like_torch() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Mean())
    opt.backward(task_losses(model, 0))
    first = [p.grad.clone() for p in model.parameters()]
    opt.backward(task_losses(model, 0))
    for param, grad in zip(model.parameters(), first):
        assert torch.allclose(param.grad, 2 * grad)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_two_backwards_add_two_aggregations_as_documented() -> None:
    model = make_model()
    params = list(model.parameters())
    opt = JacobianOptimizer(torch.optim.SGD(params, lr=0.1), UPGrad())
    opt.backward(task_losses(model, 0))
    opt.backward(task_losses(model, 1))
    accumulated = [p.grad.clone() for p in params]

    expected = []
    for step in (0, 1):
        opt.zero_grad()
        backward(task_losses(model, step), inputs=params)
        jac_to_grad(params, UPGrad())
        expected.append([p.grad.clone() for p in params])
    for actual, first, second in zip(accumulated, *expected):
        assert torch.allclose(actual, first + second, atol=1e-6)

    # The documented alternative aggregates the accumulated Jacobian: another update.
    opt.zero_grad()
    backward(task_losses(model, 0), inputs=params)
    backward(task_losses(model, 1), inputs=params)
    jac_to_grad(params, UPGrad())
    assert not torch.allclose(params[0].grad, accumulated[0], atol=1e-3)


def test_parameters_not_used_by_the_losses_keep_no_grad() -> None:
    model = make_model()
    unused = nn.Parameter(torch.ones(4))
    opt = JacobianOptimizer(torch.optim.Adam([*model.parameters(), unused], lr=0.1), UPGrad())
    opt.step(task_losses(model, 0))
    assert unused.grad is None
    assert torch.equal(unused, torch.ones(4))


def test_loss_not_connected_to_some_parameters_gives_zero_rows() -> None:
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(3))
    b = nn.Parameter(torch.randn(3))
    opt = JacobianOptimizer(torch.optim.SGD([a, b], lr=0.1), Constant(torch.tensor([1.0, 2.0])))
    opt.backward([a.pow(2).sum(), b.sum()])  # the first loss ignores b, the second ignores a
    assert torch.allclose(a.grad, 2 * a.detach())
    assert torch.allclose(b.grad, torch.full((3,), 2.0))


def test_per_group_aggregators_equal_per_group_jac_to_grad() -> None:
    model = make_model()
    first, second = model[0], model[2]
    opt = JacobianOptimizer(
        torch.optim.SGD(
            [
                {"params": first.parameters(), "aggregator": UPGrad()},
                {"params": second.parameters(), "aggregator": Mean()},
            ],
            lr=0.1,
        ),
        aggregator=Constant(torch.tensor([9.0, 9.0, 9.0])),  # must not be used
    )
    reference = make_model()
    reference_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for step in range(3):
        opt.zero_grad()
        opt.step(task_losses(model, step))
        reference_opt.zero_grad()
        backward(task_losses(reference, step), inputs=list(reference.parameters()))
        jac_to_grad(list(reference[0].parameters()), UPGrad())
        jac_to_grad(list(reference[2].parameters()), Mean())
        reference_opt.step()
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-6)
    upgrad_weights, mean_weights = opt.last_weights
    assert upgrad_weights is not None and upgrad_weights.shape == (3,)
    assert torch.allclose(mean_weights, torch.full((3,), 1 / 3))


def test_add_param_group_with_its_own_aggregator() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model[0].parameters(), lr=0.1), UPGrad())
    opt.add_param_group({"params": list(model[2].parameters()), "aggregator": Mean(), "lr": 0.5})
    assert len(opt.optimizer.param_groups) == 2
    assert opt.param_groups[1]["lr"] == 0.5

    reference = make_model()
    reference_opt = torch.optim.SGD(reference[0].parameters(), lr=0.1)
    reference_opt.add_param_group({"params": list(reference[2].parameters()), "lr": 0.5})
    opt.step(task_losses(model, 0))
    backward(task_losses(reference, 0), inputs=list(reference.parameters()))
    jac_to_grad(list(reference[0].parameters()), UPGrad())
    jac_to_grad(list(reference[2].parameters()), Mean())
    reference_opt.step()
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-6)


def test_add_param_group_rejects_a_non_aggregator() -> None:
    model = make_model()
    opt = JacobianOptimizer(torch.optim.SGD(model[0].parameters(), lr=0.1))
    with pytest.raises(TypeError, match="aggregator"):
        opt.add_param_group({"params": list(model[2].parameters()), "aggregator": "mean"})
    assert len(opt.param_groups) == 1


def make_mtl() -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU()), nn.Linear(6, 1), nn.Linear(6, 1)


def mtl_losses(trunk: nn.Module, heads: tuple[nn.Module, nn.Module], step: int):
    x, y = make_data(step)
    features = trunk(x)
    losses = [((head(features).squeeze(1) - y[:, i]) ** 2).mean() for i, head in enumerate(heads)]
    return losses, features


def test_multi_task_mode_equals_mtl_backward_and_jac_to_grad() -> None:
    trunk, head1, head2 = make_mtl()
    params = [*trunk.parameters(), *head1.parameters(), *head2.parameters()]
    opt = JacobianOptimizer(torch.optim.Adam(params, lr=0.01), UPGrad())
    ref_trunk, ref_head1, ref_head2 = make_mtl()
    ref_params = [*ref_trunk.parameters(), *ref_head1.parameters(), *ref_head2.parameters()]
    ref_opt = torch.optim.Adam(ref_params, lr=0.01)
    for step in range(3):
        losses, features = mtl_losses(trunk, (head1, head2), step)
        opt.zero_grad()
        opt.step(losses, features=features)

        losses, features = mtl_losses(ref_trunk, (ref_head1, ref_head2), step)
        ref_opt.zero_grad()
        mtl_backward(losses, features)
        jac_to_grad(list(ref_trunk.parameters()), UPGrad())
        ref_opt.step()
    for actual, expected in zip(params, ref_params):
        assert torch.allclose(actual, expected, atol=1e-6)


def test_multi_task_mode_gives_heads_their_plain_gradient() -> None:
    trunk, head1, head2 = make_mtl()
    params = [*trunk.parameters(), *head1.parameters(), *head2.parameters()]
    opt = JacobianOptimizer(torch.optim.SGD(params, lr=0.1), UPGrad())
    losses, features = mtl_losses(trunk, (head1, head2), 0)
    opt.backward(losses, features=features)
    head_grads = [p.grad.clone() for p in head1.parameters()]
    for p in params:
        p.grad = None
    losses, _ = mtl_losses(trunk, (head1, head2), 0)
    losses[0].backward()
    for grad, param in zip(head_grads, head1.parameters()):
        assert torch.allclose(grad, param.grad)


def test_gramian_mode_equals_jacobian_mode_on_per_sample_losses() -> None:
    model = make_model()
    engine = Engine(model, batch_dim=0)
    opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad(), engine=engine)
    reference = make_model()
    reference_opt = JacobianOptimizer(torch.optim.SGD(reference.parameters(), lr=0.1), UPGrad())
    for step in range(3):
        x, y = make_data(step)
        opt.zero_grad()
        opt.step(((model(x) - y) ** 2).mean(dim=1))  # one loss per sample: 16 losses
        reference_opt.zero_grad()
        reference_opt.step(((reference(x) - y) ** 2).mean(dim=1))
        assert torch.allclose(opt.last_weights[0], reference_opt.last_weights[0], atol=1e-5)
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-5)


def test_gramian_mode_flattens_losses_with_several_dimensions() -> None:
    model = make_model()
    engine = Engine(model, batch_dim=0)
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), weighting=UPGradWeighting(), engine=engine
    )
    reference = make_model()
    reference_opt = JacobianOptimizer(torch.optim.SGD(reference.parameters(), lr=0.1), UPGrad())
    x, y = make_data(0)
    opt.step((model(x) - y) ** 2)  # [16 samples, 3 tasks]
    reference_opt.step((reference(x) - y) ** 2)
    assert opt.last_weights[0].shape == (16, 3)
    assert torch.allclose(opt.last_weights[0].reshape(-1), reference_opt.last_weights[0], atol=1e-5)
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-5)


def test_gramian_mode_needs_a_gramian_weighting() -> None:
    from jdoptim.aggregation import TrimmedMean

    model = make_model()
    with pytest.raises(ValueError, match="aggregator"):
        JacobianOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            TrimmedMean(trim_number=1),
            engine=Engine(model, batch_dim=0),
        )


def test_diagnostics_count_conflicting_pairs() -> None:
    weight = nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1), UPGrad())
    opt.backward([weight[0] - 2 * weight[1], weight[1] - weight[0], weight.sum()])
    (diagnostics,) = opt.diagnostics()
    assert diagnostics.n_conflicting_pairs == 2  # rows [1, -2], [-1, 1], [1, 1]
    cosine = diagnostics.cosine_similarities
    assert torch.allclose(cosine, cosine.T)
    assert torch.allclose(cosine.diagonal(), torch.ones(3))
    expected = torch.tensor([[1.0, -2.0], [-1.0, 1.0]])  # rows 0 and 1 of the Jacobian
    expected = expected[0] @ expected[1] / (expected[0].norm() * expected[1].norm())
    assert torch.isclose(cosine[0, 1], expected)


def test_diagnostics_of_a_non_gramian_aggregator_only_on_request() -> None:
    from jdoptim.aggregation import TrimmedMean

    weight = nn.Parameter(torch.tensor([1.0, 1.0]))
    opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1), TrimmedMean(trim_number=1))
    losses = [weight[0], -weight[0], weight[1]]
    opt.backward(losses, retain_graph=True)
    assert opt.diagnostics() == (None,)
    assert opt.last_weights == (None,)
    opt.record_gramians = True
    opt.backward(losses)
    (diagnostics,) = opt.diagnostics()
    assert diagnostics.n_conflicting_pairs == 1


@pytest.mark.parametrize("parallel_chunk_size", [1, 2])
def test_chunked_jacobians_give_the_same_step(parallel_chunk_size: int) -> None:
    model = make_model()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        UPGrad(),
        parallel_chunk_size=parallel_chunk_size,
    )
    reference = make_model()
    reference_opt = JacobianOptimizer(torch.optim.SGD(reference.parameters(), lr=0.1), UPGrad())
    for step in range(2):
        opt.zero_grad()
        opt.step(task_losses(model, step))
        reference_opt.zero_grad()
        reference_opt.step(task_losses(reference, step))
    for actual, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-6)


def test_multi_task_mode_when_the_optimizer_holds_only_the_heads() -> None:
    trunk, head1, head2 = make_mtl()
    heads = [*head1.parameters(), *head2.parameters()]
    opt = JacobianOptimizer(torch.optim.SGD(heads, lr=0.1), UPGrad())
    losses, features = mtl_losses(trunk, (head1, head2), 0)
    opt.backward(losses, features=features)
    assert all(p.grad is None for p in trunk.parameters())
    assert opt.last_weights == (None,)
    losses, _ = mtl_losses(trunk, (head1, head2), 0)
    expected = torch.autograd.grad(sum(losses), heads)
    for param, grad in zip(heads, expected):
        assert torch.allclose(param.grad, grad)


def test_one_process_group_gives_the_single_process_step() -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        trunk, head1, head2 = make_mtl()
        params = [*trunk.parameters(), *head1.parameters(), *head2.parameters()]
        opt = JacobianOptimizer(torch.optim.SGD(params, lr=0.1), UPGrad(), process_group=group)
        ref_trunk, ref_head1, ref_head2 = make_mtl()
        ref_params = [*ref_trunk.parameters(), *ref_head1.parameters(), *ref_head2.parameters()]
        ref_opt = JacobianOptimizer(torch.optim.SGD(ref_params, lr=0.1), UPGrad())
        for step in range(2):
            losses, features = mtl_losses(trunk, (head1, head2), step)
            opt.step(losses, features=features)
            opt.step(torch.stack(mtl_losses(trunk, (head1, head2), step)[0]))
            losses, features = mtl_losses(ref_trunk, (ref_head1, ref_head2), step)
            ref_opt.step(losses, features=features)
            ref_opt.step(torch.stack(mtl_losses(ref_trunk, (ref_head1, ref_head2), step)[0]))
        for actual, expected in zip(params, ref_params):
            assert torch.allclose(actual, expected, atol=1e-6)
    finally:
        dist.destroy_process_group()
