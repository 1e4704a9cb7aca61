"""Multi-task mode shares ``autojac.mtl_backward``'s algorithm: dependencies that bypass the
features are refused, and group ``"aggregator"`` keys on task-specific parameters too."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer, autojac
from jdoptim.aggregation import Mean, UPGrad


def make_parts() -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    return nn.Linear(5, 4).double(), nn.Linear(4, 1).double(), nn.Linear(4, 1).double()


def data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    return x, torch.randn(8, 2, generator=generator, dtype=torch.float64)


def test_penalty_on_the_trunk_inside_a_task_loss_is_refused_like_mtl_backward() -> None:
    trunk, head1, head2 = make_parts()
    params = [*trunk.parameters(), *head1.parameters(), *head2.parameters()]
    opt = JacobianOptimizer(torch.optim.SGD(params, lr=0.1), UPGrad())
    x, y = data()
    features = trunk(x)
    penalty = 1e-2 * trunk.weight.square().sum()
    losses = [((head1(features)[:, 0] - y[:, 0]) ** 2).mean() + penalty, head2(features).mean()]
    with pytest.raises(ValueError, match="other than through `features`") as raised:
        opt.backward(losses, features=features, retain_graph=True)
    with pytest.raises(ValueError, match="other than through `features`") as low_level:
        autojac.mtl_backward(losses, features=features)
    assert "penalty" in str(raised.value) and str(raised.value) == str(low_level.value)
    assert all(p.grad is None for p in params)


def test_weight_tied_between_the_trunk_and_a_head_is_refused() -> None:
    torch.manual_seed(0)
    embedding = nn.Parameter(torch.randn(4, 5, dtype=torch.float64))
    head = nn.Linear(4, 1).double()
    opt = JacobianOptimizer(torch.optim.SGD([embedding, *head.parameters()], lr=0.1), UPGrad())
    x, _ = data()
    features = x @ embedding.T
    tied_output = features @ embedding  # the same matrix used again, in the head
    losses = [head(features).mean(), tied_output.square().mean()]
    with pytest.raises(ValueError, match="tied"):
        opt.backward(losses, features=features)
    assert embedding.grad is None


def test_multi_task_mode_equals_mtl_backward_and_jac_to_grad() -> None:
    trunk, head1, head2 = make_parts()
    params = [*trunk.parameters(), *head1.parameters(), *head2.parameters()]
    x, y = data()

    def losses() -> tuple[Tensor, list[Tensor]]:
        features = trunk(x).relu()
        return features, [
            ((head1(features)[:, 0] - y[:, 0]) ** 2).mean(),
            (head2(features)[:, 0] - y[:, 1]).abs().mean(),
        ]

    features, task_losses = losses()
    autojac.mtl_backward(task_losses, features=features)
    autojac.jac_to_grad(list(trunk.parameters()), UPGrad())
    expected = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    opt = JacobianOptimizer(torch.optim.SGD(params, lr=0.1), UPGrad())
    features, task_losses = losses()
    opt.backward(task_losses, features=features)
    for param, grad in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=0, atol=0)


def test_aggregator_key_on_a_group_of_task_specific_parameters_is_refused() -> None:
    trunk, head1, head2 = make_parts()
    opt = JacobianOptimizer(
        torch.optim.SGD(
            [
                {"params": trunk.parameters(), "aggregator": UPGrad()},
                {"params": [*head1.parameters(), *head2.parameters()], "aggregator": Mean()},
            ],
            lr=0.1,
        )
    )
    x, _ = data()
    features = trunk(x)
    losses = [head1(features).mean(), head2(features).mean()]
    with pytest.raises(ValueError, match="Parameter group 1 has an 'aggregator' key"):
        opt.backward(losses, features=features)
    assert all(p.grad is None for p in [*trunk.parameters(), *head1.parameters()])


def test_aggregator_key_on_a_group_of_shared_parameters_is_honoured() -> None:
    trunk, head1, head2 = make_parts()
    heads = [*head1.parameters(), *head2.parameters()]
    opt = JacobianOptimizer(
        torch.optim.SGD([{"params": trunk.parameters(), "aggregator": Mean()}, {"params": heads}]),
        UPGrad(),
    )
    x, _ = data()
    features = trunk(x)
    opt.backward([head1(features).mean(), head2(features).square().mean()], features=features)
    weights, no_block = opt.last_weights
    torch.testing.assert_close(weights, torch.full((2,), 0.5, dtype=torch.float64))
    assert no_block is None


def test_every_feature_must_be_used_by_some_loss() -> None:
    trunk, head1, _ = make_parts()
    x, _ = data()
    used, unused = trunk(x), trunk(x * 2)
    with pytest.raises(ValueError, match="element 1 of shape"):
        autojac.mtl_backward([head1(used).mean()], features=[used, unused])


def test_feature_level_mode_equals_feature_backward() -> None:
    trunk, head1, head2 = make_parts()
    params = [*trunk.parameters(), *head1.parameters(), *head2.parameters()]
    x, y = data()

    def losses() -> tuple[Tensor, list[Tensor]]:
        features = trunk(x).relu()
        return features, [
            ((head1(features)[:, 0] - y[:, 0]) ** 2).mean(),
            (head2(features)[:, 0] - y[:, 1]).abs().mean(),
        ]

    features, task_losses = losses()
    expected_weights = autojac.feature_backward(task_losses, features, UPGrad())
    expected = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    opt = JacobianOptimizer(torch.optim.SGD(params, lr=0.1), UPGrad())
    features, task_losses = losses()
    opt.backward(task_losses, features=features, aggregate_at="features")
    for param, grad in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=0, atol=0)
    assert expected_weights is not None
    torch.testing.assert_close(opt.last_weights[0], expected_weights)
    (diagnostics,) = opt.diagnostics()
    assert diagnostics is not None and diagnostics.cosine_similarities.shape == (2, 2)
    features, task_losses = losses()
    opt.step(task_losses, features=features, aggregate_at="features")  # and through step


def test_feature_level_mode_refusals() -> None:
    trunk, head1, head2 = make_parts()
    x, _ = data()
    keyed = JacobianOptimizer(
        torch.optim.SGD(
            [
                {"params": trunk.parameters(), "aggregator": Mean()},
                {"params": [*head1.parameters(), *head2.parameters()]},
            ],
            lr=0.1,
        )
    )
    features = trunk(x)
    losses = [head1(features).mean(), head2(features).mean()]
    with pytest.raises(ValueError, match="feature-level mode"):
        keyed.backward(losses, features=features, aggregate_at="features")
    opt = JacobianOptimizer(
        torch.optim.SGD([*trunk.parameters(), *head1.parameters(), *head2.parameters()], lr=0.1)
    )
    with pytest.raises(ValueError, match="`aggregate_at` must be"):
        opt.backward(losses, features=features, aggregate_at="trunk")
    with pytest.raises(ValueError, match="needs `features`"):
        opt.backward(losses, aggregate_at="features")
    with pytest.raises(ValueError, match="cannot accumulate"):
        opt.backward(losses, features=features, aggregate_at="features", aggregate=False)
    assert all(p.grad is None for p in trunk.parameters())


def test_feature_level_mode_refuses_a_process_group() -> None:
    from jdoptim.optim._feature_mode import check_aggregate_at

    with pytest.raises(ValueError, match="`process_group`"):
        check_aggregate_at("features", object(), True, sync=True)
