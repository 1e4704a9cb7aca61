"""Parameters shared by several calls (weight tying) against explicit Gramians (float64): an
embedding tied to the output head, a linear layer called twice, two embeddings sharing a
table, with batch_dim 0, 1 and None; none of them is replayed."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _explicit_gramian import explicit_gramian, trainable
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import jdoptim.autogram._gramian as gramian_module
import jdoptim.autogram._tied as tied_module
from jdoptim.autogram import Engine
from jdoptim.autogram._tied import _cross_linear, _Use

TOLERANCE = {"rtol": 1e-8, "atol": 1e-10}


@pytest.fixture
def no_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("replayed")

    monkeypatch.setattr(gramian_module, "call_jacobians", refuse)


class TiedLM(nn.Module):
    """Token + position embeddings, a pre-norm causal block, final norm, head tied to the
    token embedding (optionally with a bias of its own)."""

    def __init__(self, vocabulary: int, padding_idx: int | None, head_bias: bool) -> None:
        super().__init__()
        self.token = nn.Embedding(vocabulary, 8, padding_idx=padding_idx)
        self.position = nn.Embedding(8, 8)
        self.block = nn.TransformerEncoderLayer(
            8, 2, 16, dropout=0.0, norm_first=True, batch_first=True
        )
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, vocabulary, bias=head_bias)
        self.head.weight = self.token.weight

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        h = self.token(tokens) + self.position(torch.arange(length))
        mask = nn.Transformer.generate_square_subsequent_mask(length, dtype=h.dtype)
        h = self.block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


def _lm_losses(model: nn.Module, tokens: Tensor, tasks: bool) -> Tensor:
    logits = model(tokens)[:, :-1]
    losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    if not tasks:
        return losses.sum(1)
    half = losses.shape[1] // 2
    return torch.stack([losses[:, :half].sum(1), losses[:, half:].sum(1)], dim=1)


def _check(model: nn.Module, losses: Tensor, engine: Engine) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gramian = engine.compute_gramian(losses)
    assert not [w for w in caught if "batching rule" in str(w.message)]
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


@pytest.mark.usefixtures("no_replay")
@pytest.mark.parametrize("vocabulary", [11, 300])  # 300: more table rows than tokens
@pytest.mark.parametrize("padding_idx", [None, 0])
@pytest.mark.parametrize("head_bias", [False, True])
@pytest.mark.parametrize(
    ("batch_dim", "tasks"), [(0, True), (1, True), (None, True), (0, False), (None, False)]
)
def test_embedding_tied_to_the_head(
    vocabulary: int, padding_idx: int | None, head_bias: bool, batch_dim: int | None, tasks: bool
) -> None:
    torch.manual_seed(0)
    model = TiedLM(vocabulary, padding_idx, head_bias).double()
    engine = Engine(model, batch_dim=batch_dim)
    tokens = torch.randint(0, 11, (4, 6))
    tokens[1, :3] = 0  # padding tokens (an ordinary token without padding_idx)
    losses = _lm_losses(model, tokens, tasks)
    _check(model, losses.T if batch_dim == 1 else losses, engine)


@pytest.mark.usefixtures("no_replay")
@pytest.mark.parametrize("batch_dim", [0, None])
def test_tied_embedding_scaled_by_frequency(batch_dim: int | None) -> None:
    torch.manual_seed(0)
    model = TiedLM(7, None, False).double()
    model.token.scale_grad_by_freq = True
    engine = Engine(model, batch_dim=batch_dim)
    tokens = torch.tensor([[1, 2, 2, 3, 1], [1, 1, 4, 5, 6], [6, 2, 0, 1, 0]])
    _check(model, _lm_losses(model, tokens, True), engine)


class TwiceCalled(nn.Module):
    """A linear layer called twice in one forward (weight and bias shared)."""

    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.layer = nn.Linear(width, width)
        self.out = nn.Linear(width, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.layer(torch.tanh(self.layer(x)))))


@pytest.mark.usefixtures("no_replay")
@pytest.mark.parametrize("shape", [(5, 3), (5, 4, 3), (2, 9, 3)], ids=str)
@pytest.mark.parametrize("batch_dim", [0, None])
def test_linear_called_twice(shape: tuple[int, ...], batch_dim: int | None) -> None:
    torch.manual_seed(0)
    model = TwiceCalled(3, 2).double()
    engine = Engine(model, batch_dim=batch_dim)
    out = model(torch.randn(*shape, dtype=torch.float64))
    flat = out.reshape(shape[0], -1)
    losses = torch.stack([flat.pow(2).sum(1), flat.sin().sum(1)], dim=1)
    _check(model, losses, engine)


class SharedTable(nn.Module):
    """Two embeddings sharing one table (e.g. source and target tokens), one with padding."""

    def __init__(self) -> None:
        super().__init__()
        self.source = nn.Embedding(9, 4)
        self.target = nn.Embedding(9, 4, padding_idx=0)
        self.target.weight = self.source.weight
        self.head = nn.Linear(4, 2)

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        h = torch.tanh(self.source(source)).mean(1) * torch.tanh(self.target(target)).sum(1)
        return self.head(h)


@pytest.mark.usefixtures("no_replay")
@pytest.mark.parametrize("batch_dim", [0, 1, None])
def test_two_embeddings_sharing_a_table(batch_dim: int | None) -> None:
    torch.manual_seed(0)
    model = SharedTable().double()
    engine = Engine(model, batch_dim=batch_dim)
    source, target = torch.randint(0, 5, (4, 3)), torch.randint(0, 9, (4, 5))
    target[2, 1:] = 0
    out = model(source, target)
    losses = torch.stack([out.pow(2).sum(1), out.sin().sum(1)], dim=1)
    _check(model, losses.T if batch_dim == 1 else losses, engine)


def test_both_forms_of_the_linear_cross_term_agree() -> None:
    torch.manual_seed(0)
    module = nn.Linear(3, 4)
    x1, x2 = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 6, 3, dtype=torch.float64)
    d1, d2 = (
        torch.randn(3, 2, 5, 4, dtype=torch.float64),
        torch.randn(3, 2, 6, 4, dtype=torch.float64),
    )
    expected = torch.einsum("tbso,bsi->tboi", d1, x1).reshape(6, -1)
    expected = expected @ torch.einsum("tbso,bsi->tboi", d2, x2).reshape(6, -1).T
    names = {0: "weight"}
    small = _cross_linear(_Use(module, x1, d1, names), _Use(module, x2, d2, names), True)
    # 40 times the output width: per-row gradients cost more than the kernel.
    wide1, wide2 = d1.repeat(1, 1, 1, 40), d2.repeat(1, 1, 1, 40)
    large = _cross_linear(_Use(module, x1, wide1, names), _Use(module, x2, wide2, names), True)
    torch.testing.assert_close(small, expected)
    torch.testing.assert_close(large, 40 * expected)


class Overridden(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2.0


def test_tie_with_a_module_without_closed_form_is_replayed_exactly() -> None:
    torch.manual_seed(0)
    embedding = nn.Embedding(7, 4).double()
    head = Overridden(4, 7, bias=False).double()
    head.weight = embedding.weight
    model = nn.Sequential(embedding, nn.Tanh(), head)
    engine = Engine(model, batch_dim=0)
    out = model(torch.randint(0, 7, (3, 4)))
    _check(model, out.pow(2).sum((1, 2)), engine)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 5),
    vocabulary=st.integers(2, 9),
    dim=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_embedding_tied_to_a_head_random_sizes(
    batch: int, length: int, vocabulary: int, dim: int, seed: int
) -> None:
    torch.manual_seed(seed)
    embedding = nn.Embedding(vocabulary, dim).double()
    head = nn.Linear(dim, vocabulary).double()
    head.weight = embedding.weight
    model = nn.Sequential(embedding, nn.Tanh(), head)
    engine = Engine(model, batch_dim=0)
    out = model(torch.randint(0, vocabulary, (batch, length)))
    losses = torch.stack([out.pow(2).sum((1, 2)), out.sin().sum((1, 2))], dim=1)
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


@pytest.mark.usefixtures("no_replay")
@pytest.mark.parametrize("batch_dim", [0, None])
def test_tied_head_by_blocks_of_table_rows(batch_dim: int | None) -> None:
    # Width 16 > 2 tokens per sequence: the cross term takes blocks of 2 of the 7 table rows.
    torch.manual_seed(0)
    embedding = nn.Embedding(7, 16).double()
    head = nn.Linear(16, 7, bias=False).double()
    head.weight = embedding.weight
    model = nn.Sequential(embedding, nn.Tanh(), head)
    engine = Engine(model, batch_dim=batch_dim)
    out = model(torch.tensor([[0, 1], [2, 3], [4, 5], [6, 0]]))
    _check(model, torch.stack([out.pow(2).sum((1, 2)), out.sin().sum((1, 2))], dim=1), engine)


@pytest.mark.usefixtures("no_replay")
def test_tied_head_on_non_contiguous_tokens() -> None:
    # One loss per sample: the rows read the recorded tokens themselves, here a transposed view.
    torch.manual_seed(0)
    embedding = nn.Embedding(7, 16).double()
    head = nn.Linear(16, 7, bias=False).double()
    head.weight = embedding.weight
    model = nn.Sequential(embedding, nn.Tanh(), head)
    engine = Engine(model, batch_dim=0)
    tokens = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0], [1, 1, 2, 6]]).T
    assert not tokens.is_contiguous()
    out = model(tokens)
    losses = out.pow(2).sum((1, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # e.g. torch.searchsorted's on non-contiguous values
        gramian = engine.compute_gramian(losses)
    assert [str(warning.message) for warning in caught] == []
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


@pytest.mark.usefixtures("no_replay")
@pytest.mark.parametrize("form", ["per-row gradients", "pairs of positions"])
@pytest.mark.parametrize("padding_idx", [None, 0])
@pytest.mark.parametrize("batch_dim", [0, 1, None])
def test_both_forms_of_the_embedding_head_cross_term(
    monkeypatch: pytest.MonkeyPatch, form: str, padding_idx: int | None, batch_dim: int | None
) -> None:
    # Both forms against the explicit Gramian; the pairs of positions here by blocks of one row
    # (the budget: the largest of the calls' tensors, 528 entries, against 288 pairs per row).
    if form == "pairs of positions":
        monkeypatch.setattr(tied_module, "_KERNEL_PREFERENCE", 1e9)
    else:
        monkeypatch.setattr(tied_module, "_KERNEL_PREFERENCE", 0.0)
    calls: list[str] = []
    by_pairs = tied_module._cross_with_head_by_pairs

    def counted(*args: Any) -> Tensor:
        calls.append("pairs")
        return by_pairs(*args)

    monkeypatch.setattr(tied_module, "_cross_with_head_by_pairs", counted)
    torch.manual_seed(0)
    model = TiedLM(11, padding_idx, head_bias=False).double()
    engine = Engine(model, batch_dim=batch_dim)
    tokens = torch.randint(0, 11, (4, 6))
    tokens[0, :2] = 0  # the padding token, where there is one
    losses = _lm_losses(model, tokens, tasks=True)
    _check(model, losses.T if batch_dim == 1 else losses, engine)
    assert bool(calls) == (form == "pairs of positions")
