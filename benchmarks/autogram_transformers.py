"""Instance-wise risk minimisation of transformers with the autogram engine.

Two models, one loss per sequence, float32 on the CPU:

- ``encoder``: a linear embedding, ``nn.TransformerEncoderLayer(64, 4, 128)``, mean-pooling and
  a linear head, on batches of 32 sequences of 12 vectors (classification into 10 classes);
- ``causal_lm``: token and learned position embeddings (``nn.Embedding``), two pre-norm
  ``nn.TransformerEncoderLayer`` blocks with a causal mask, a final ``nn.LayerNorm`` and a
  linear head, on batches of 16 sequences of 16 tokens (next-token cross-entropy summed over
  each sequence);
- ``causal_lm_tied``: the same with the head's weight tied to the token embedding (no head bias).

Configurations: ``summed`` (``losses.mean().backward()`` + SGD step, the floor) and
``autogram`` (``UPGradWeighting()(engine.compute_gramian(losses))``, ``losses.backward(weights)``
+ SGD step). Dropout is 0: a layer that draws random numbers cannot be replayed. Times are
medians of interleaved repeats in one process; peak memory is the growth of the resident set
during one step, each configuration in its own subprocess (as in ``autogram_iwrm.py``).

Run ``PYTHONPATH=. python benchmarks/autogram_transformers.py`` (2 threads:
``OMP_NUM_THREADS=2``); ``benchmarks/run.py`` runs the same steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from _memory import peak_growth_bytes
from torch import Tensor, nn

MODELS = ("encoder", "causal_lm", "causal_lm_tied")
CONFIGURATIONS = ("summed", "autogram")
VOCABULARY = 100
#: (batch, sequence length) of each model.
SHAPES = {"encoder": (32, 12), "causal_lm": (16, 16), "causal_lm_tied": (16, 16)}


class Encoder(nn.Module):
    """Linear embedding → encoder layer → mean-pool → linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 64)
        self.layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer(self.embed(x)).mean(dim=1))


class CausalLM(nn.Module):
    """Token + position embeddings, two pre-norm causal blocks, final norm, linear head (its
    weight tied to the token embedding with ``tie``)."""

    def __init__(self, context: int = 64, dim: int = 64, tie: bool = False) -> None:
        super().__init__()
        self.token = nn.Embedding(VOCABULARY, dim)
        self.position = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, 4, 4 * dim, dropout=0.0, norm_first=True, batch_first=True
            )
            for _ in range(2)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCABULARY, bias=not tie)
        if tie:
            self.head.weight = self.token.weight

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        h = self.token(tokens) + self.position(torch.arange(length, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


def make_model(name: str) -> nn.Module:
    """The model ``name`` (one of :data:`MODELS`)."""
    if name == "encoder":
        return Encoder()
    if name == "causal_lm":
        return CausalLM()
    if name == "causal_lm_tied":
        return CausalLM(tie=True)
    raise ValueError(f"`name` must be one of {MODELS}, but got {name!r}.")


def make_batch(name: str, batch: int | None = None) -> tuple[Tensor, Tensor]:
    """Inputs and targets of ``name``'s task (the default batch size unless ``batch``)."""
    size, length = SHAPES[name]
    size = size if batch is None else batch
    generator = torch.Generator().manual_seed(0)
    if name == "encoder":
        x = torch.randn(size, length, 16, generator=generator)
        return x, torch.randint(0, 10, (size,), generator=generator)
    tokens = torch.randint(0, VOCABULARY, (size, length + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


def per_sample_losses(name: str, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """One loss per sequence: ``[batch]``."""
    out = model(x)
    if name == "encoder":
        return nn.functional.cross_entropy(out, y, reduction="none")
    return nn.functional.cross_entropy(out.transpose(1, 2), y, reduction="none").sum(dim=1)


def make_step(configuration: str, name: str, model: nn.Module) -> Callable[[Tensor, Tensor], None]:
    """One training step of ``configuration`` on ``model``, as a function of ``(x, y)``."""
    from jdoptim.aggregation import UPGradWeighting
    from jdoptim.autogram import Engine

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    if configuration == "summed":

        def step(x: Tensor, y: Tensor) -> None:
            optimizer.zero_grad()
            per_sample_losses(name, model, x, y).mean().backward()
            optimizer.step()

    elif configuration == "autogram":
        engine = Engine(model, batch_dim=0)
        weighting = UPGradWeighting()

        def step(x: Tensor, y: Tensor) -> None:
            optimizer.zero_grad()
            losses = per_sample_losses(name, model, x, y)
            losses.backward(weighting(engine.compute_gramian(losses)))
            optimizer.step()

    else:
        raise ValueError(
            f"`configuration` must be one of {CONFIGURATIONS}, but got {configuration!r}."
        )
    return step


def measure_times(name: str, repeats: int = 20) -> dict[str, float]:
    """Median time in seconds of one step of each configuration (interleaved repeats)."""
    x, y = make_batch(name)
    steps = {}
    for configuration in CONFIGURATIONS:
        torch.manual_seed(0)
        steps[configuration] = make_step(configuration, name, make_model(name))
    for step in steps.values():
        step(x, y)  # Warm-up (and the engine's first test of which calls are batched).
    samples: dict[str, list[float]] = {c: [] for c in CONFIGURATIONS}
    for _ in range(repeats):
        for configuration, step in steps.items():
            start = time.perf_counter()
            step(x, y)
            samples[configuration].append(time.perf_counter() - start)
    return {c: statistics.median(s) for c, s in samples.items()}


def peak_memory_of_one_step(configuration: str, name: str) -> int:
    """Growth in bytes of the peak resident set size during one step (in this process)."""
    torch.manual_seed(0)
    step = make_step(configuration, name, make_model(name))
    x, y = make_batch(name)
    step(x, y)  # Lazy initialisation and the engine's first step.
    return peak_growth_bytes(lambda: step(x, y))


def measure_peak_memory(name: str) -> dict[str, int]:
    """:func:`peak_memory_of_one_step` of each configuration, each in a fresh subprocess."""
    peaks = {}
    for configuration in CONFIGURATIONS:
        completed = subprocess.run(
            [sys.executable, __file__, "--peak-memory-of", configuration, "--model", name],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        peaks[configuration] = int(completed.stdout.strip().splitlines()[-1])
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak-memory-of", choices=CONFIGURATIONS)
    arguments = parser.parse_args()
    if arguments.peak_memory_of is not None:
        print(peak_memory_of_one_step(arguments.peak_memory_of, arguments.model or "encoder"))
        return
    results = {}
    for name in (arguments.model,) if arguments.model else MODELS:
        times = measure_times(name, arguments.repeats)
        peaks = measure_peak_memory(name)
        results[name] = {
            "time_ratio": times["autogram"] / times["summed"],
            "peak_ratio": peaks["autogram"] / peaks["summed"] if peaks["summed"] else float("nan"),
        }
        print(
            f"{name:<10} summed {times['summed'] * 1e3:8.2f} ms  autogram "
            f"{times['autogram'] * 1e3:8.2f} ms  × {results[name]['time_ratio']:.2f} (target "
            f"≤ 2.5)  peak × {results[name]['peak_ratio']:.2f} (target ≤ 1.5)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
