"""Recurrent networks: Jacobian descent without vmap (``parallel_chunk_size=1``).

The rows of the Jacobian are normally computed in one vectorised backward pass (``torch.vmap``).
Some models cannot be vmapped — fused RNN kernels (cuDNN), some custom operators.
``parallel_chunk_size=1`` computes the rows one at a time, with plain backward passes, so that
every model works (the default ``"auto"`` does so by itself for cuDNN RNNs and models compiled
by ``torch.compile``).

Run: ``python examples/rnn.py --steps 60``.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad


class SequenceModel(nn.Module):
    """An LSTM reading a sequence, with two outputs read from its last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=3, hidden_size=16, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, sequences: Tensor) -> Tensor:
        output, _ = self.lstm(sequences)
        result: Tensor = self.head(output[:, -1])
        return result


def main(argv: list[str] | None = None) -> tuple[list[float], list[float]]:
    parser = argparse.ArgumentParser(description="Jacobian descent on an LSTM.")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    sequences = torch.randn(64, 12, 3)
    # Task 1: the mean of the first feature; task 2: the last value of the second feature.
    targets = torch.stack([sequences[:, :, 0].mean(dim=1), sequences[:, -1, 1]], dim=1)
    model = SequenceModel()
    optimizer = JacobianOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2), UPGrad(), parallel_chunk_size=1
    )

    first: list[float] = []
    last: list[float] = []
    for step in range(args.steps):
        outputs = model(sequences)
        losses = [(outputs[:, i] - targets[:, i]).pow(2).mean() for i in range(2)]
        optimizer.zero_grad()
        optimizer.step(losses)
        last = [loss.item() for loss in losses]
        first = first or last
        if step == 0 or (step + 1) % max(args.steps // 4, 1) == 0:
            print(f"step {step + 1:4d}  task 1 loss {last[0]:.4f}  task 2 loss {last[1]:.4f}")
    return first, last


if __name__ == "__main__":
    main()
