"""Calls without a batch dimension (position embeddings, learned constants) with `batch_dim` set:
exact Gramians, whatever the sizes, never a tensor taken for batched because of its shape."""

from __future__ import annotations

import pytest
import torch
from _explicit_gramian import explicit_gramian, trainable
from torch import Tensor, nn

from jdoptim.autogram import Engine

TOLERANCE = {"rtol": 1e-8, "atol": 1e-10}


class PositionModel(nn.Module):
    """Token + learned position embeddings (the positions carry no batch) and a linear head."""

    def __init__(self, vocabulary: int = 9, positions: int = 8, dim: int = 4) -> None:
        super().__init__()
        self.token = nn.Embedding(vocabulary, dim)
        self.position = nn.Embedding(positions, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.token(tokens) + self.position(torch.arange(tokens.shape[1]))
        return self.head(torch.tanh(h))


class ConstantToken(nn.Module):
    """A learned constant (a class token) prepended to every sequence."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.randn(1, 1, dim))

    def forward(self) -> Tensor:
        return self.value


class WithClassToken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token = ConstantToken()
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([self.token().expand(x.shape[0], 1, -1), x], dim=1)
        h = torch.tanh(self.mix(h))
        return self.head(h.softmax(dim=1).mul(h).sum(1))


def _losses(out: Tensor) -> Tensor:
    flat = out.reshape(out.shape[0], -1)
    return torch.stack([(flat**2).sum(1), flat.sin().sum(1)], dim=1)


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().double()


@pytest.mark.parametrize(("batch", "length"), [(6, 6), (4, 6), (5, 3), (1, 4)])
@pytest.mark.parametrize("batch_dim", [0, 1, None])
def test_position_embedding_is_exact(batch: int, length: int, batch_dim: int | None) -> None:
    model = _model(PositionModel)
    tokens = torch.randint(0, 9, (batch, length))
    engine = Engine(model, batch_dim=batch_dim)
    losses = _losses(model(tokens))
    if batch_dim == 1:
        losses = losses.T
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


def test_sequence_length_equal_to_the_batch_size_one_loss_per_sample() -> None:
    # The defect: positions [6] taken for 6 samples gave max |G - J Jᵀ| = 0.079.
    model = _model(PositionModel)
    tokens = torch.randint(0, 9, (6, 6))
    engine = Engine(model, batch_dim=0)
    losses = model(tokens).pow(2).sum((1, 2))
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


@pytest.mark.parametrize("batch_dim", [0, None])
def test_learned_constant_is_exact(batch_dim: int | None) -> None:
    model = _model(WithClassToken)
    x = torch.randn(3, 1, 4, dtype=torch.float64)  # 1 + 1 tokens: the constant has 1 row too
    engine = Engine(model, batch_dim=batch_dim)
    losses = _losses(model(x))
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


def test_layer_applied_along_another_dimension_is_exact() -> None:
    # The losses' batch (dimension 1) is the layer's second dimension: computed loss by loss.
    layer = nn.Linear(3, 2).double()
    engine = Engine(layer, batch_dim=1)
    losses = layer(torch.randn(5, 4, 3, dtype=torch.float64)).sum(-1)
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(layer)), **TOLERANCE)


def test_verdict_is_kept_across_steps() -> None:
    model = _model(PositionModel)
    engine = Engine(model, batch_dim=0)
    for step in range(3):
        tokens = torch.randint(0, 9, (6, 6), generator=torch.Generator().manual_seed(step))
        losses = model(tokens).pow(2).sum((1, 2))
        gramian = engine.compute_gramian(losses)
        expected = explicit_gramian(losses, trainable(model))
        torch.testing.assert_close(gramian, expected, **TOLERANCE)
    # One verdict per module and shapes: token embedding, position embedding, head.
    assert sorted(engine._verdicts.values()) == [False, False, True]


class ConsumedOtherwise(nn.Module):
    """Position embeddings consumed in several ways: added twice, multiplied, unsqueezed."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.token = nn.Embedding(9, 4)
        self.position = nn.Embedding(8, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        e = self.token(tokens)
        p = self.norm(self.position(torch.arange(tokens.shape[1])))  # a shared norm call too
        if self.how == "added_twice":
            h = torch.tanh(e + p) + p
        elif self.how == "multiplied":
            h = e * p
        else:
            h = e + p.unsqueeze(0)
        return self.head(torch.tanh(h))


@pytest.mark.parametrize("how", ["added_twice", "multiplied", "unsqueezed"])
@pytest.mark.parametrize("length", [5, 6])
def test_shared_outputs_consumed_otherwise_are_exact(how: str, length: int) -> None:
    torch.manual_seed(0)
    model = ConsumedOtherwise(how).double()
    engine = Engine(model, batch_dim=0)
    for _ in range(2):  # the second step uses the verdicts of the first
        losses = _losses(model(torch.randint(0, 9, (5, length))))
        gramian = engine.compute_gramian(losses)
        expected = explicit_gramian(losses, trainable(model))
        torch.testing.assert_close(gramian, expected, **TOLERANCE)
    # Only direct sums into batched tensors give the norm's call a per-sample stand-in (the
    # others are computed one loss at a time).
    assert list(engine._broadcast_verdicts.values()) == ([True] if how == "added_twice" else [])
