"""Closed forms of the token-wise layers of transformers (embeddings, layer and RMS norms)
against explicit Gramians (float64), with batch_dim 0, 1 and None."""

from __future__ import annotations

import pytest
import torch
from _explicit_gramian import explicit_gramian, trainable
from torch import Tensor, nn

from jdoptim.autogram import Engine
from jdoptim.autogram._embedding import embedding_gramian, is_plain_embedding
from jdoptim.autogram._normalization import is_plain_normalization

TOLERANCE = {"rtol": 1e-8, "atol": 1e-10}


class Tokens(nn.Module):
    def __init__(self, embedding: nn.Embedding, norm: nn.Module) -> None:
        super().__init__()
        self.embedding = embedding
        self.norm = norm
        self.head = nn.Linear(embedding.embedding_dim, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.norm(self.embedding(tokens))))


def _losses(out: Tensor) -> Tensor:
    flat = out.reshape(out.shape[0], -1)
    return torch.stack([(flat**2).sum(1), flat.sin().sum(1)], dim=1)


def _check(model: nn.Module, inputs: Tensor, batch_dim: int | None, tasks: bool = True) -> None:
    engine = Engine(model, batch_dim=batch_dim)
    losses = _losses(model(inputs))
    if not tasks:
        losses = losses.sum(1)
    elif batch_dim == 1:
        losses = losses.T
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


NORMS = {
    "layer_norm": lambda: nn.LayerNorm(4),
    "layer_norm_no_bias": lambda: nn.LayerNorm(4, bias=False),
    "layer_norm_2d": lambda: nn.Sequential(
        nn.Unflatten(-1, (2, 2)), nn.LayerNorm((2, 2)), nn.Flatten(-2)
    ),
    "rms_norm": lambda: nn.RMSNorm(4),
    "rms_norm_eps": lambda: nn.RMSNorm(4, eps=1e-3),
}
EMBEDDINGS = {
    "plain": lambda: nn.Embedding(7, 4),
    "padding": lambda: nn.Embedding(7, 4, padding_idx=0),
    "large_vocabulary": lambda: nn.Embedding(500, 4),
}


@pytest.mark.parametrize("norm", NORMS, ids=str)
@pytest.mark.parametrize("embedding", EMBEDDINGS, ids=str)
@pytest.mark.parametrize(
    ("batch_dim", "tasks"), [(0, True), (1, True), (None, True), (0, False), (None, False)]
)
def test_embedding_and_norm(norm: str, embedding: str, batch_dim: int | None, tasks: bool) -> None:
    torch.manual_seed(0)
    model = Tokens(EMBEDDINGS[embedding](), NORMS[norm]()).double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter))  # not the initial ones and zeros
    tokens = torch.randint(0, 7, (4, 5))
    tokens[0, :2] = 0  # padding tokens in the first sample
    _check(model, tokens, batch_dim, tasks)


def test_frozen_norm_bias() -> None:
    torch.manual_seed(0)
    model = Tokens(nn.Embedding(7, 4), nn.LayerNorm(4)).double()
    model.norm.bias.requires_grad_(False)
    _check(model, torch.randint(0, 7, (3, 4)), 0)


@pytest.mark.parametrize(
    ("positions", "dim"),
    [
        (1, 6),  # one token per sample, all distinct: the kernel over pairs of positions
        (4, 6),  # four tokens per sample among five: the per-row gradients
        (4, 600),
    ],
)
def test_both_forms_of_the_embedding_gramian_are_exact(positions: int, dim: int) -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 5, (3, positions)) if positions > 1 else torch.tensor([[0], [3], [4]])
    delta = torch.randn(2, 3, positions, dim, dtype=torch.float64)
    gramian = embedding_gramian(nn.Embedding(5, dim), x, delta, batched=True)
    jacobian = torch.zeros(2, 3, 5, dim, dtype=torch.float64)
    for t in range(2):
        for b in range(3):
            for s in range(positions):
                jacobian[t, b, x[b, s]] += delta[t, b, s]
    expected = jacobian.reshape(6, -1) @ jacobian.reshape(6, -1).T
    torch.testing.assert_close(gramian, expected)


def test_embedding_options_left_to_the_replay() -> None:
    assert is_plain_embedding(nn.Embedding(3, 2))
    assert not is_plain_embedding(nn.Embedding(3, 2, max_norm=1.0))
    assert is_plain_normalization(nn.LayerNorm(3)) and is_plain_normalization(nn.RMSNorm(3))
    assert not is_plain_normalization(nn.GroupNorm(1, 3))


@pytest.mark.parametrize("batch_dim", [0, None])
def test_embedding_scaled_by_frequency(batch_dim: int | None) -> None:
    torch.manual_seed(0)
    model = Tokens(nn.Embedding(7, 4, scale_grad_by_freq=True), nn.LayerNorm(4)).double()
    # The counts are over the whole batch: tokens repeated across and within samples.
    _check(model, torch.tensor([[1, 2, 2, 3], [1, 1, 4, 5], [6, 2, 0, 1]]), batch_dim)


def test_embedding_with_max_norm_is_refused_sample_by_sample() -> None:
    # max_norm renormalises the weight in place in the forward: no closed form, no vmap.
    torch.manual_seed(0)
    model = Tokens(nn.Embedding(7, 4, max_norm=10.0), nn.LayerNorm(4)).double()
    with pytest.raises(ValueError, match="batch_dim=None"):
        _check(model, torch.randint(0, 7, (3, 4)), 0)
