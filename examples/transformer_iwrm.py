"""Instance-wise risk minimisation of a small causal language model with the autogram engine.

Every sequence of a batch is an objective (its next-token loss, summed over its tokens). The
model is GPT-like: token and learned position embeddings, two pre-norm
``nn.TransformerEncoderLayer`` blocks with a causal mask, a final ``nn.LayerNorm`` and a
linear head tied to the token embedding. The position embedding is called on
``torch.arange(T)``, which has no batch dimension: the engine computes its per-sequence
contribution exactly even though the batch has as many sequences as tokens. Each step takes
the ``[batch, batch]`` Gramian of the per-sequence losses, weights them with
``UPGradWeighting`` and backpropagates once.

The data: sequences counting modulo the vocabulary from a random start (``3 4 5 6 …``), so
that the next token is predictable from the previous one. The script trains with summed
losses and with UPGrad on the same batches and prints the mean loss per sequence.

Run: ``python examples/transformer_iwrm.py --steps 60``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jdoptim.aggregation import UPGradWeighting
from jdoptim.autogram import Engine

VOCABULARY = 16


class TinyGPT(nn.Module):
    def __init__(self, context: int = 32, dim: int = 32) -> None:
        super().__init__()
        self.token = nn.Embedding(VOCABULARY, dim)
        self.position = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, 4, 2 * dim, dropout=0.0, norm_first=True, batch_first=True
            )
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCABULARY, bias=False)
        self.head.weight = self.token.weight  # weight tying: one parameter, two uses

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        h = self.token(tokens) + self.position(torch.arange(length))  # positions: no batch
        mask = nn.Transformer.generate_square_subsequent_mask(length)
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


def make_batch(generator: torch.Generator, batch: int, length: int) -> Tensor:
    starts = torch.randint(0, VOCABULARY, (batch, 1), generator=generator)
    return (starts + torch.arange(length + 1)) % VOCABULARY


def sequence_losses(model: nn.Module, sequences: Tensor) -> Tensor:
    """One loss per sequence: the next-token cross-entropy summed over its tokens."""
    logits = model(sequences[:, :-1])
    return F.cross_entropy(logits.transpose(1, 2), sequences[:, 1:], reduction="none").sum(1)


def train(mode: str, steps: int, batch: int, length: int) -> list[float]:
    """Trains with ``mode`` in {"summed", "upgrad"}; returns the mean loss per step."""
    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    engine = Engine(model, batch_dim=0) if mode == "upgrad" else None
    weighting = UPGradWeighting()
    generator = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        losses = sequence_losses(model, make_batch(generator, batch, length))  # [batch]
        optimizer.zero_grad()
        if engine is None:
            losses.mean().backward()
        else:
            gramian = engine.compute_gramian(losses)  # [batch, batch], no Jacobian built
            losses.backward(weighting(gramian))
        optimizer.step()
        history.append(losses.mean().item())
    return history


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description="IWRM of a tiny causal language model.")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=8)
    args = parser.parse_args(argv)
    results = {
        mode: train(mode, args.steps, args.batch, args.length) for mode in ("summed", "upgrad")
    }
    for mode, history in results.items():
        first, last = history[0], history[-1]
        print(f"{mode:7s} mean loss per sequence: first step {first:.2f} -> last {last:.2f}")
    return results


if __name__ == "__main__":
    main()
