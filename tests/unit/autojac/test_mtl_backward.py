"""Tests of jdoptim.autojac.mtl_backward against Jacobians and gradients built row by row."""

from __future__ import annotations

import pytest
import torch
from _autojac_reference import explicit_jacobians
from torch import Tensor, nn

from jdoptim.autojac import mtl_backward

CHUNK_SIZES = [None, 1, 3]


class MultiTaskModel(nn.Module):
    """A shared trunk, three heads, and a parameter that nothing uses."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Sigmoid())
        self.heads = nn.ModuleList([nn.Linear(5, 1), nn.Linear(5, 2), nn.Linear(5, 3)])
        self.unused = nn.Parameter(torch.randn(2))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.trunk(x)
        losses = [head(features).square().mean() for head in self.heads]
        return features, losses


def make_model() -> MultiTaskModel:
    return MultiTaskModel().double()


def batch() -> Tensor:
    return torch.randn(7, 4, dtype=torch.float64)


def close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parallel_chunk_size", CHUNK_SIZES)
def test_matches_explicit_jacobian_and_gradients(parallel_chunk_size) -> None:
    model = make_model()
    x = batch()
    shared = list(model.trunk.parameters())
    _, reference_losses = model(x)
    expected_jacobians = explicit_jacobians(reference_losses, shared)
    expected_grads = [
        torch.autograd.grad(loss, list(head.parameters()), retain_graph=True)
        for loss, head in zip(reference_losses, model.heads)
    ]

    features, losses = model(x)
    mtl_backward(losses, features, parallel_chunk_size=parallel_chunk_size)

    for param, expected in zip(shared, expected_jacobians, strict=True):
        assert param.jac.shape == (3, *param.shape)
        close(param.jac, expected)
        assert param.grad is None
    for head, grads in zip(model.heads, expected_grads, strict=True):
        for param, expected in zip(head.parameters(), grads, strict=True):
            close(param.grad, expected)
            assert not hasattr(param, "jac")
    assert model.unused.grad is None
    assert not hasattr(model.unused, "jac")


def test_explicit_params_match_defaults() -> None:
    model = make_model()
    x = batch()
    features, losses = model(x)
    mtl_backward(losses, features)
    default_jacs = [p.jac.clone() for p in model.trunk.parameters()]
    default_grads = [p.grad.clone() for p in model.heads.parameters()]
    model.zero_grad(set_to_none=True)
    for p in model.trunk.parameters():
        del p.jac

    features, losses = model(x)
    mtl_backward(
        losses,
        features,
        tasks_params=(head.parameters() for head in model.heads),
        shared_params=model.trunk.parameters(),
    )

    for p, expected in zip(model.trunk.parameters(), default_jacs, strict=True):
        assert torch.equal(p.jac, expected)
    for p, expected in zip(model.heads.parameters(), default_grads, strict=True):
        assert torch.equal(p.grad, expected)


def test_second_call_accumulates_jac_and_grad() -> None:
    model = make_model()
    x = batch()
    features, losses = model(x)
    mtl_backward(losses, features)
    once_jacs = [p.jac.clone() for p in model.trunk.parameters()]
    once_grads = [p.grad.clone() for p in model.heads.parameters()]

    features, losses = model(x)
    mtl_backward(losses, features)

    for p, once in zip(model.trunk.parameters(), once_jacs, strict=True):
        close(p.jac, 2 * once)
    for p, once in zip(model.heads.parameters(), once_grads, strict=True):
        close(p.grad, 2 * once)


def test_non_scalar_losses_with_grad_tensors() -> None:
    model = make_model()
    x = batch()
    shared = list(model.trunk.parameters())
    weights = [torch.rand(7, 1, dtype=torch.float64), torch.rand(7, 2, dtype=torch.float64)]

    def losses_of(features: Tensor) -> list[Tensor]:
        return [model.heads[0](features).square(), model.heads[1](features).square()]

    reference = losses_of(model.trunk(x))
    expected = []
    for jacobian in explicit_jacobians(reference, shared):
        rows = jacobian.reshape(7 + 14, -1)
        row_1 = weights[0].reshape(-1) @ rows[:7]
        row_2 = weights[1].reshape(-1) @ rows[7:]
        expected.append(torch.stack([row_1, row_2]).reshape(2, *jacobian.shape[1:]))

    features = model.trunk(x)
    mtl_backward(losses_of(features), features, grad_tensors=weights)

    for p, e in zip(shared, expected, strict=True):
        close(p.jac, e)


def test_several_features() -> None:
    trunk_a, trunk_b = nn.Linear(3, 2).double(), nn.Linear(3, 4).double()
    head_1, head_2 = nn.Linear(6, 1).double(), nn.Linear(4, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64)

    def forward() -> tuple[list[Tensor], list[Tensor]]:
        a, b = trunk_a(x).tanh(), trunk_b(x).tanh()
        return [a, b], [head_1(torch.cat([a, b], 1)).sum(), head_2(b).exp().sum()]

    shared = [*trunk_a.parameters(), *trunk_b.parameters()]
    expected = explicit_jacobians(forward()[1], shared)
    features, losses = forward()
    mtl_backward(losses, features)

    for p, e in zip(shared, expected, strict=True):
        close(p.jac, e)
    assert torch.equal(trunk_a.weight.jac[1], torch.zeros_like(trunk_a.weight))


def test_task_not_using_features_gets_zero_row() -> None:
    trunk, head = nn.Linear(3, 2).double(), nn.Linear(2, 1).double()
    own = nn.Parameter(torch.randn(3, dtype=torch.float64))
    features = trunk(torch.randn(4, 3, dtype=torch.float64))

    mtl_backward([head(features).sum(), own.square().sum()], features)

    assert torch.equal(trunk.weight.jac[1], torch.zeros_like(trunk.weight))
    close(own.grad, 2 * own.detach())


def test_graph_is_freed_unless_retained() -> None:
    model = make_model()
    features, losses = model(batch())

    mtl_backward(losses, features, retain_graph=True)
    mtl_backward(losses, features)

    with pytest.raises(RuntimeError, match="second time"):
        mtl_backward(losses, features)


def test_error_empty_tensors() -> None:
    model = make_model()
    features, _ = model(batch())
    with pytest.raises(ValueError, match="`tensors`"):
        mtl_backward([], features)


def test_error_loss_without_grad() -> None:
    model = make_model()
    features, losses = model(batch())
    with pytest.raises(ValueError, match="`tensors`"):
        mtl_backward([losses[0], torch.tensor(1.0)], features)


def test_error_non_scalar_loss_without_grad_tensors() -> None:
    model = make_model()
    features, _ = model(batch())
    with pytest.raises(ValueError, match="`tensors`"):
        mtl_backward([model.heads[0](features)], features)


def test_error_grad_tensors_of_wrong_shape() -> None:
    model = make_model()
    features, losses = model(batch())
    with pytest.raises(ValueError, match="`grad_tensors`"):
        mtl_backward(losses, features, grad_tensors=[torch.ones(2)] * 3)


def test_error_grad_tensors_of_wrong_length() -> None:
    model = make_model()
    features, losses = model(batch())
    with pytest.raises(ValueError, match="`grad_tensors`"):
        mtl_backward(losses, features, grad_tensors=[torch.ones(())] * 2)


def test_error_features_unrelated_to_losses() -> None:
    model = make_model()
    _, losses = model(batch())
    other = model.trunk(batch())
    with pytest.raises(ValueError, match="`features`"):
        mtl_backward(losses, other)


def test_error_features_without_grad() -> None:
    model = make_model()
    _, losses = model(batch())
    with pytest.raises(ValueError, match="`features`"):
        mtl_backward(losses, torch.ones(3))


def test_error_shared_parameter_used_outside_features() -> None:
    trunk, head = nn.Linear(3, 2), nn.Linear(2, 1)
    features = trunk(torch.randn(4, 3))
    loss = head(features).sum() + trunk.weight.square().sum()
    with pytest.raises(ValueError, match="`features`"):
        mtl_backward([loss], features)


def test_error_overlap_of_tasks_and_shared_params() -> None:
    model = make_model()
    features, losses = model(batch())
    with pytest.raises(ValueError, match="`tasks_params` and `shared_params`"):
        mtl_backward(
            losses,
            features,
            tasks_params=[[model.heads[0].weight, model.trunk[0].weight], [], []],
        )


def test_error_tasks_params_of_wrong_length() -> None:
    model = make_model()
    features, losses = model(batch())
    with pytest.raises(ValueError, match="`tasks_params`"):
        mtl_backward(losses, features, tasks_params=[head.parameters() for head in model.heads[:2]])


def test_error_tasks_params_a_tensor() -> None:
    model = make_model()
    features, losses = model(batch())
    with pytest.raises(TypeError, match="`tasks_params`"):
        mtl_backward(losses, features, tasks_params=model.heads[0].weight)


def test_error_shared_param_not_a_leaf() -> None:
    model = make_model()
    features, losses = model(batch())
    with pytest.raises(ValueError, match="`shared_params`"):
        mtl_backward(losses, features, shared_params=[features])


def test_error_existing_jac_with_other_rows_changes_nothing() -> None:
    model = make_model()
    features, losses = model(batch())
    mtl_backward(losses[:2], features, retain_graph=True)
    grads_before = [p.grad.clone() for p in model.heads[0].parameters()]

    with pytest.raises(ValueError, match="`shared_params`"):
        mtl_backward(losses, features)

    assert all(p.grad is None for p in model.heads[2].parameters())
    for p, before in zip(model.heads[0].parameters(), grads_before, strict=True):
        assert torch.equal(p.grad, before)
    assert model.trunk[0].weight.jac.shape[0] == 2


def test_error_non_positive_chunk_size() -> None:
    model = make_model()
    features, losses = model(batch())
    with pytest.raises(ValueError, match="`parallel_chunk_size`"):
        mtl_backward(losses, features, parallel_chunk_size=0)
