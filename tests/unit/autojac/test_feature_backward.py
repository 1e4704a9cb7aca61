"""``feature_backward``: the Jacobian with respect to the features, aggregated, then one backward
pass through the trunk; against explicit per-loss gradients in float64."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from jdoptim.aggregation import MGDA, Mean, UPGrad
from jdoptim.autojac import feature_backward, mtl_backward


def make_parts() -> tuple[nn.Module, nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 4), nn.Tanh()).double()
    return trunk, nn.Linear(4, 1).double(), nn.Linear(4, 1).double()


def data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    return x, torch.randn(6, 2, generator=generator, dtype=torch.float64)


def losses_of(trunk: nn.Module, heads: list[nn.Linear]) -> tuple[Tensor, list[Tensor]]:
    x, y = data()
    features = trunk(x)
    return features, [((h(features)[:, 0] - y[:, i]) ** 2).mean() for i, h in enumerate(heads)]


@pytest.mark.parametrize("aggregator", [UPGrad(), MGDA(), Mean()], ids=str)
def test_equals_the_explicit_computation(aggregator: nn.Module) -> None:
    trunk, head1, head2 = make_parts()
    features, losses = losses_of(trunk, [head1, head2])
    rows = [torch.autograd.grad(loss, features, retain_graph=True)[0] for loss in losses]
    jacobian = torch.stack([row.reshape(-1) for row in rows])  # [m, b·d] = [2, 24]
    update = aggregator(jacobian).reshape(features.shape)
    expected_shared = torch.autograd.grad(
        features, list(trunk.parameters()), update, retain_graph=True
    )
    expected_heads = [
        torch.autograd.grad(loss, list(h.parameters()), retain_graph=True)
        for loss, h in zip(losses, [head1, head2])
    ]

    weights = feature_backward(losses, features, aggregator)

    for param, grad in zip(trunk.parameters(), expected_shared, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)
    for head, grads in zip([head1, head2], expected_heads, strict=True):
        for param, grad in zip(head.parameters(), grads, strict=True):
            torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)
    assert weights is not None and weights.shape == (2,)
    torch.testing.assert_close(weights @ jacobian, update.reshape(-1), rtol=1e-10, atol=1e-12)


def test_update_conflicts_with_no_task_in_feature_space() -> None:
    trunk, head1, head2 = make_parts()
    features, losses = losses_of(trunk, [head1, head2])
    opposed = [losses[0], 0.1 * losses[1] - 3 * losses[0]]  # strongly conflicting objectives
    rows = torch.stack(
        [torch.autograd.grad(loss, features, retain_graph=True)[0].reshape(-1) for loss in opposed]
    )
    weights = feature_backward(opposed, features, UPGrad(reg_eps=0.0))  # exact non-conflict
    assert weights is not None
    products = rows @ (weights @ rows)
    assert (products >= -1e-10 * rows.norm(dim=1) * (weights @ rows).norm()).all()
    assert (rows @ rows.sum(dim=0) < 0).any()  # the plain sum would conflict with one task


def test_with_mean_the_shared_gradient_is_that_of_the_mean_loss() -> None:
    trunk, head1, head2 = make_parts()
    features, losses = losses_of(trunk, [head1, head2])
    feature_backward(losses, features, Mean())
    feature_level = [p.grad.clone() for p in trunk.parameters()]
    for p in trunk.parameters():
        p.grad = None
    features, losses = losses_of(trunk, [head1, head2])
    (torch.stack(losses).mean()).backward()
    for param, grad in zip(trunk.parameters(), feature_level, strict=True):
        torch.testing.assert_close(grad, param.grad, rtol=1e-10, atol=1e-12)


def test_task_gradients_equal_those_of_mtl_backward() -> None:
    trunk, head1, head2 = make_parts()
    features, losses = losses_of(trunk, [head1, head2])
    mtl_backward(losses, features=features)
    expected = [p.grad.clone() for h in (head1, head2) for p in h.parameters()]
    for h in (head1, head2):
        for p in h.parameters():
            p.grad = None
    features, losses = losses_of(trunk, [head1, head2])
    feature_backward(losses, features, UPGrad())
    got = [p.grad for h in (head1, head2) for p in h.parameters()]
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_errors_name_the_argument() -> None:
    trunk, head1, head2 = make_parts()
    features, losses = losses_of(trunk, [head1, head2])
    with pytest.raises(TypeError, match="`aggregator`"):
        feature_backward(losses, features, Mean)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`features`"):
        feature_backward(losses, [features, features.detach() * 2 + features], Mean())
    with pytest.raises(ValueError, match="`tensors` must be scalar"):
        feature_backward([head1(features)], features, Mean())
    penalty = trunk[0].weight.sum()
    with pytest.raises(ValueError, match="other than through `features`"):
        feature_backward([losses[0] + penalty, losses[1]], features, Mean())
