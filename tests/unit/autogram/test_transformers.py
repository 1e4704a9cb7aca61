"""Transformer models against explicit Gramians (float64): attention with masks, position
embeddings, encoder and decoder layers (training and eval mode), weight tying."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from _explicit_gramian import explicit_gramian, trainable
from torch import Tensor, nn

from jdoptim.autogram import Engine

TOLERANCE = {"rtol": 1e-8, "atol": 1e-10}
VOCABULARY = 11


class CausalLM(nn.Module):
    """Token + position embeddings, pre-norm causal blocks, final norm, linear head."""

    def __init__(self, tie: bool, dim: int = 8) -> None:
        super().__init__()
        self.token = nn.Embedding(VOCABULARY, dim)
        self.position = nn.Embedding(8, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, norm_first=True, batch_first=True)
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCABULARY, bias=False)
        if tie:
            self.head.weight = self.token.weight

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        h = self.token(tokens) + self.position(torch.arange(length))
        mask = nn.Transformer.generate_square_subsequent_mask(length, dtype=h.dtype)
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


def _next_token_losses(model: nn.Module, tokens: Tensor) -> Tensor:
    """[batch, 2]: the next-token loss of the first and of the second half of each sequence."""
    logits = model(tokens)[:, :-1]
    targets = tokens[:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    half = losses.shape[1] // 2
    return torch.stack([losses[:, :half].sum(1), losses[:, half:].sum(1)], dim=1)


def _check(model: nn.Module, losses: Tensor, batch_dim: int | None, engine: Engine) -> None:
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("batch_dim", [0, 1, None])
@pytest.mark.parametrize("length", [4, 6])  # 4: as long as the batch
def test_causal_language_model(
    tie: bool, training: bool, batch_dim: int | None, length: int
) -> None:
    torch.manual_seed(0)
    model = CausalLM(tie).double().train(training)
    engine = Engine(model, batch_dim=batch_dim)
    losses = _next_token_losses(model, torch.randint(0, VOCABULARY, (4, length)))
    _check(model, losses.T if batch_dim == 1 else losses, batch_dim, engine)


class Encoder(nn.Module):
    """Linear embedding, an encoder layer with padding, mean-pool, linear head."""

    def __init__(self, batch_first: bool, norm_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(3, 8)
        self.layer = nn.TransformerEncoderLayer(
            8, 2, 16, dropout=0.0, batch_first=batch_first, norm_first=norm_first
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.layer(h, src_key_padding_mask=padding)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("batch_dim", [0, None])
def test_encoder_layer_with_padding(
    batch_first: bool, norm_first: bool, training: bool, batch_dim: int | None
) -> None:
    torch.manual_seed(0)
    model = Encoder(batch_first, norm_first).double().train(training)
    engine = Engine(model, batch_dim=batch_dim)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[1, 3:] = True
    losses = model(x, padding).pow(2)
    _check(model, losses, batch_dim, engine)


@pytest.mark.parametrize("batch_dim", [0, None])
def test_decoder_layer(batch_dim: int | None) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double()
    engine = Engine(layer, batch_dim=batch_dim)
    target = torch.randn(3, 4, 8, dtype=torch.float64)
    memory = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = nn.Transformer.generate_square_subsequent_mask(4, dtype=torch.float64)
    out = layer(target, memory, tgt_mask=mask, tgt_is_causal=True)
    losses = out.pow(2).sum((1, 2))
    _check(layer, losses, batch_dim, engine)


@pytest.mark.parametrize(
    "options",
    [
        {"batch_first": True},
        {"batch_first": False},
        {"batch_first": True, "kdim": 3, "vdim": 5},  # separate projections
        {"batch_first": True, "bias": False},
    ],
    ids=["batch_first", "sequence_first", "separate_projections", "no_bias"],
)
@pytest.mark.parametrize("batch_dim", [0, None])
def test_multihead_attention(options: dict[str, object], batch_dim: int | None) -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, **options).double()  # type: ignore[arg-type]
    kdim, vdim = options.get("kdim", 4), options.get("vdim", 4)
    query = torch.randn(3, 4, 4, dtype=torch.float64)
    key = torch.randn(3, 4, kdim, dtype=torch.float64)  # type: ignore[arg-type]
    value = torch.randn(3, 4, vdim, dtype=torch.float64)  # type: ignore[arg-type]
    padding = torch.tensor([[False] * 4, [False, False, True, True], [False] * 3 + [True]])
    if not options["batch_first"]:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    engine = Engine(attention, batch_dim=batch_dim)
    out, _ = attention(query, key, value, key_padding_mask=padding, need_weights=False)
    if not options["batch_first"]:
        out = out.transpose(0, 1)
    losses = torch.stack([out.pow(2).sum((1, 2)), out.sin().sum((1, 2))], dim=1)
    _check(attention, losses, batch_dim, engine)


def test_no_vmap_fallback_notice_reaches_the_user() -> None:
    torch.manual_seed(0)
    model = CausalLM(tie=False)
    engine = Engine(model, batch_dim=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = _next_token_losses(model, torch.randint(0, VOCABULARY, (4, 6)))
        engine.compute_gramian(losses)
    assert not [w for w in caught if "batching rule" in str(w.message)]


def _attention_losses(out: Tensor) -> Tensor:
    flat = out.reshape(out.shape[0], -1)
    return torch.stack([(flat**2).sum(1), flat.sin().sum(1)], dim=1)


@pytest.mark.parametrize("batch_dim", [0, None])
def test_attention_with_float_mask_per_head_and_weights(batch_dim: int | None) -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, batch_first=True).double()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.randn(3 * 2, 5, 5, dtype=torch.float64)  # one additive mask per sample and head
    engine = Engine(attention, batch_dim=batch_dim)
    out, weights = attention(x, x, x, attn_mask=mask)  # need_weights: the explicit path
    losses = _attention_losses(out)
    _check(attention, losses, batch_dim, engine)
    # The attention weights receive gradient too: the call is replayed, exactly.
    out, weights = attention(x, x, x, attn_mask=mask)
    losses = _attention_losses(out) + weights.sum((1, 2)).unsqueeze(1) ** 2
    _check(attention, losses, batch_dim, engine)


def test_attention_on_one_unbatched_sequence() -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    engine = Engine(attention, batch_dim=None)
    out, _ = attention(x, x, x, need_weights=False)
    _check(attention, torch.stack([out.pow(2).sum(), out.sin().sum()]), None, engine)


@pytest.mark.parametrize("batch_dim", [0, None])
def test_attention_and_token_layers_need_no_replay(
    batch_dim: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jdoptim.autogram._gramian as gramian_module

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("replayed")

    monkeypatch.setattr(gramian_module, "call_jacobians", refuse)
    torch.manual_seed(0)
    model = CausalLM(tie=False).double().eval()
    engine = Engine(model, batch_dim=batch_dim)
    losses = _next_token_losses(model, torch.randint(0, VOCABULARY, (4, 4)))
    _check(model, losses, batch_dim, engine)


def test_attention_with_dropout_in_training_is_refused() -> None:
    attention = nn.MultiheadAttention(4, 2, dropout=0.5, batch_first=True).double()
    engine = Engine(attention, batch_dim=0)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    out, _ = attention(x, x, x, need_weights=False)
    with pytest.raises(ValueError, match="random"):
        engine.compute_gramian(out.pow(2).sum((1, 2)))
