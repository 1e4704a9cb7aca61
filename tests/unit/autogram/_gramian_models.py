"""Small float64 models returning a ``[batch, tasks]`` matrix of per-sample losses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

BATCH = 4


@dataclass
class Architecture:
    """A model, its input and a function computing the ``[batch, tasks]`` losses."""

    name: str
    model: nn.Module
    inputs: Tensor
    losses: Callable[[nn.Module, Tensor], Tensor]
    batch_independent: bool = True

    def __repr__(self) -> str:
        return self.name


def _per_sample(out: Tensor) -> Tensor:
    """[batch, ...] → [batch, 2]: two different per-sample losses."""
    flat = out.reshape(out.shape[0], -1)
    return torch.stack([(flat**2).sum(1), flat.sin().sum(1)], dim=1)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 5))
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(x + self.inner(x))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 6), nn.ReLU())
        self.head1 = nn.Linear(6, 1)
        self.head2 = nn.Sequential(nn.Linear(6, 3), nn.GELU(), nn.Linear(3, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.trunk(x)
        return torch.cat([self.head1(h), self.head2(h)], dim=1)


class Tied(nn.Module):
    """A layer called twice in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.layer(torch.tanh(self.layer(x)))))


class SharedWeight(nn.Module):
    """An embedding whose weight is also the weight of the output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, 4)
        self.mix = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 7, bias=False)
        self.decoder.weight = self.embedding.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decoder(torch.tanh(self.mix(self.embedding(tokens)))).mean(1)


class EmbeddingBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 4)
        self.linear = nn.Linear(4, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.linear(self.embedding(tokens)).mean(1)


class Attention(nn.Module):
    """A transformer-like block: self-attention, residual, layer norm, feed-forward."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 8), nn.GELU(), nn.Linear(8, dim))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        h = self.norm(x + self.proj(scores @ v))
        return h + self.ff(h)


class TorchAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.attention(x, x, x)
        return self.out(h).mean(1)


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.rnn(x)
        return self.out(h[:, -1])


def _build() -> list[Architecture]:
    torch.manual_seed(0)
    d = torch.float64
    x5 = torch.randn(BATCH, 5, dtype=d)
    img = torch.randn(BATCH, 2, 6, 6, dtype=d)
    seq = torch.randn(BATCH, 3, 7, dtype=d)
    tokens = torch.randint(0, 10, (BATCH, 3))
    tokens7 = torch.randint(0, 7, (BATCH, 3))
    x_seq = torch.randn(BATCH, 3, 4, dtype=d)

    def apply(model: nn.Module, x: Tensor) -> Tensor:
        return _per_sample(model(x))

    architectures = [
        Architecture(
            "mlp",
            nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.Sigmoid()),
            x5,
            apply,
        ),
        Architecture(
            "cnn",
            nn.Sequential(
                nn.Conv2d(2, 3, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(3, 4, 2),
                nn.ELU(),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(4, 3),
            ),
            img,
            apply,
        ),
        Architecture(
            "conv1d",
            nn.Sequential(nn.Conv1d(3, 4, 3, stride=2), nn.Tanh(), nn.Conv1d(4, 2, 2)),
            seq,
            apply,
        ),
        Architecture("embedding", EmbeddingBag(), tokens, apply),
        Architecture(
            "layer_norm",
            nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.SiLU(), nn.Linear(6, 3)),
            x5,
            apply,
        ),
        Architecture(
            "group_norm",
            nn.Sequential(
                nn.Conv2d(2, 4, 3),
                nn.GroupNorm(2, 4),
                nn.Softplus(),
                nn.Flatten(),
                nn.Linear(64, 2),
            ),
            img,
            apply,
        ),
        Architecture("residual", Residual(), x5, apply),
        Architecture("two_heads", TwoHeads(), x5, lambda m, x: m(x) ** 2),
        Architecture("tied_call", Tied(), x5, apply),
        Architecture("shared_weight", SharedWeight(), tokens7, apply),
        Architecture("attention", Attention(), x_seq, apply),
        Architecture("torch_attention", TorchAttention(), x_seq, apply),
        Architecture(
            "dropout_eval",
            nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.Hardtanh(), nn.Linear(6, 3)).eval(),
            x5,
            apply,
        ),
        Architecture(
            "sequence_linear",
            nn.Sequential(nn.Linear(4, 30), nn.Tanh(), nn.Linear(30, 2)),
            x_seq,
            apply,
        ),
        Architecture(
            "batch_norm_eval",
            nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)).eval(),
            x5,
            apply,
        ),
        Architecture(
            "batch_norm_train",
            nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)),
            x5,
            apply,
            batch_independent=False,
        ),
        Architecture("gru", Recurrent(), x_seq[..., :3], apply, batch_independent=False),
    ]
    for architecture in architectures:
        architecture.model.to(d)
    return architectures


ARCHITECTURES = _build()
