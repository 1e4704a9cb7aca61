"""Self-attention whose projections are read from the autograd graph (no recomputation of the
attention) against explicit Gramians (float64), and the calls that keep the recomputation."""

from __future__ import annotations

import pytest
import torch
from _explicit_gramian import explicit_gramian, trainable
from torch import Tensor, nn

import jdoptim.autogram._attention as attention_module
from jdoptim.autogram import Engine

TOLERANCE = {"rtol": 1e-8, "atol": 1e-10}


@pytest.fixture
def no_recomputation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("recomputed")

    monkeypatch.setattr(attention_module, "_attend", refuse)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per recomputation of an attention call."""
    recorded: list[int] = []
    attend = attention_module._attend

    def counting(*args: object, **kwargs: object) -> Tensor:
        recorded.append(1)
        return attend(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(attention_module, "_attend", counting)
    return recorded


def _losses(out: Tensor) -> Tensor:
    flat = out.reshape(out.shape[0], -1)
    return torch.stack([(flat**2).sum(1), flat.sin().sum(1)], dim=1)


def _check(model: nn.Module, losses: Tensor, engine: Engine) -> None:
    gramian = engine.compute_gramian(losses)
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


class SelfAttention(nn.Module):
    """A linear map into self-attention (with the masks given), then a linear head."""

    def __init__(self, batch_first: bool, bias: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(3, 4)
        self.attention = nn.MultiheadAttention(4, 2, batch_first=batch_first, bias=bias)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor, **masks: Tensor | bool) -> Tensor:
        h = torch.tanh(self.embed(x))
        if not self.batch_first:
            h = h.transpose(0, 1)
        out, _ = self.attention(h, h, h, need_weights=False, **masks)  # type: ignore[arg-type]
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.head(out)


@pytest.mark.usefixtures("no_recomputation")
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("masks", ["none", "causal", "padding"])
@pytest.mark.parametrize("batch_dim", [0, 1, None])
def test_self_attention_read_from_the_graph(
    batch_first: bool, bias: bool, masks: str, batch_dim: int | None
) -> None:
    torch.manual_seed(0)
    model = SelfAttention(batch_first, bias).double()
    engine = Engine(model, batch_dim=batch_dim)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    arguments: dict[str, Tensor | bool] = {}
    if masks == "causal":
        arguments = {
            "attn_mask": nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64),
            "is_causal": True,
        }
    elif masks == "padding":
        padding = torch.zeros(3, 5, dtype=torch.bool)
        padding[1, 3:] = True
        arguments = {"key_padding_mask": padding}
    losses = _losses(model(x, **arguments))
    _check(model, losses.T if batch_dim == 1 else losses, engine)


@pytest.mark.usefixtures("no_recomputation")
def test_attention_as_the_first_layer_on_an_input_without_grad() -> None:
    # The single backward pass must still run the fused projection's node.
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, batch_first=True).double()
    engine = Engine(attention, batch_dim=0)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    out, _ = attention(x, x, x, need_weights=False)
    _check(attention, out.pow(2).sum((1, 2)), engine)


@pytest.mark.usefixtures("no_recomputation")
def test_attention_as_the_first_layer_on_an_input_with_grad() -> None:
    # The pass asks for the gradient of the projection's input, which no other call needs.
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, batch_first=True).double()
    engine = Engine(attention, batch_dim=0)
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    out, _ = attention(x, x, x, need_weights=False)
    _check(attention, out.pow(2).sum((1, 2)), engine)


@pytest.mark.usefixtures("no_recomputation")
@pytest.mark.parametrize("positional", [0, 1, 2])
def test_self_attention_with_keyword_arguments_is_read_from_the_graph(positional: int) -> None:
    # query, key and value found whether passed by position or by name.
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, batch_first=True).double()
    engine = Engine(attention, batch_dim=0)
    x = torch.tanh(torch.randn(3, 5, 4, dtype=torch.float64))
    names = ("query", "key", "value")
    keywords = {name: x for name in names[positional:]}
    out, _ = attention(*([x] * positional), need_weights=False, **keywords)  # type: ignore[arg-type]
    _check(attention, out.pow(2).sum((1, 2)), engine)


def test_cross_attention_with_keyword_arguments_is_recomputed(calls: list[int]) -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, batch_first=True).double()
    engine = Engine(attention, batch_dim=0)
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    memory = torch.randn(3, 6, 4, dtype=torch.float64)
    out, _ = attention(x, key=memory, value=memory, need_weights=False)
    _check(attention, out.pow(2).sum((1, 2)), engine)
    assert calls == [1]


@pytest.mark.usefixtures("no_recomputation")
def test_the_backward_pass_skips_the_gradient_of_the_fused_projection_weight() -> None:
    torch.manual_seed(0)
    model = SelfAttention(batch_first=True, bias=True).double()
    engine = Engine(model, batch_dim=0)
    reached: list[int] = []
    model.attention.in_proj_weight.register_hook(lambda grad: reached.append(1))
    losses = _losses(model(torch.randn(3, 5, 3, dtype=torch.float64)))[:, 0]
    gramian = engine.compute_gramian(losses)
    assert reached == []
    torch.testing.assert_close(gramian, explicit_gramian(losses, trainable(model)), **TOLERANCE)


# No fused projection in their graphs: torch projects an unbatched query separately.
@pytest.mark.parametrize(
    ("case", "batch_dim"), [("cross_attention", 0), ("cross_attention", None), ("unbatched", None)]
)
def test_other_calls_are_recomputed_exactly(
    case: str, batch_dim: int | None, calls: list[int]
) -> None:
    torch.manual_seed(0)
    if case == "unbatched":
        attention = nn.MultiheadAttention(4, 2).double()
        engine = Engine(attention, batch_dim=None)
        x = torch.randn(5, 4, dtype=torch.float64)
        out, _ = attention(x, x, x, need_weights=False)
        losses = torch.stack([out.pow(2).sum(), out.sin().sum()])
    else:
        attention = nn.MultiheadAttention(4, 2, batch_first=True).double()
        engine = Engine(attention, batch_dim=batch_dim)
        query = torch.randn(3, 4, 4, dtype=torch.float64)
        memory = torch.randn(3, 6, 4, dtype=torch.float64)
        out, _ = attention(query, memory, memory, need_weights=False)
        losses = _losses(out)
    _check(attention, losses, engine)
    assert calls
