"""Instance-wise risk minimisation with the autogram engine, against the summed-loss step.

One training step on the small CNN of the performance suite (3 convolutions + 2 linear layers,
32×32 RGB inputs, batch 64, one cross-entropy loss per sample), in these configurations:

- ``summed``: ``losses.mean().backward()`` + SGD step (the floor);
- ``autogram``: ``UPGradWeighting()(engine.compute_gramian(losses))``, then
  ``losses.backward(weights)`` + SGD step;
- ``autogram_mean``: the same with ``MeanWeighting`` (the engine's cost without the QP of
  UPGrad);
- ``autojac``: ``autojac.backward(losses)`` + ``jac_to_grad(params, UPGrad())`` + SGD step,
  with the default arguments (``parallel_chunk_size="auto"``, which on the CPU chooses one
  backward pass per row for this convolutional model);
- ``autojac_vmap``: the same with ``parallel_chunk_size=None`` (one ``vmap`` over the 64 rows:
  on the CPU, torch's batched convolution backward costs about twice the 64 separate ones and
  holds 64 copies of every activation gradient);
- ``autojac_loop``: the same with ``parallel_chunk_size=1`` (one backward pass per row).

Times are medians of repeated steps in one process (configurations interleaved, so that the
noise of a shared machine hits them alike). Peak memory is measured for each configuration in
its own subprocess, as the growth of the peak resident set size during one step over the
resident size just before it (after a warm-up step with a batch of 2, so that lazy
initialisation is not counted); the subprocess sets ``MALLOC_MMAP_THRESHOLD_`` so that freed
tensors leave the resident set at once.

Run ``PYTHONPATH=. python benchmarks/autogram_iwrm.py``; other scripts call :func:`run`.
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

CONFIGURATIONS = (
    "summed",
    "autogram",
    "autogram_mean",
    "autojac",
    "autojac_vmap",
    "autojac_loop",
)
CHUNK_SIZES: dict[str, int | str | None] = {
    "autojac": "auto",
    "autojac_vmap": None,
    "autojac_loop": 1,
}


def make_cnn() -> nn.Module:
    """The CNN of the performance suite: 3 convolutions + 2 linear layers on 32×32 RGB images."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def make_step(configuration: str, model: nn.Module) -> Callable[[Tensor, Tensor], None]:
    """One training step of ``configuration`` on ``model``, as a function of ``(x, y)``."""
    from jdoptim.aggregation import MeanWeighting, UPGrad, UPGradWeighting, Weighting
    from jdoptim.autogram import Engine

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss(reduction="none")
    params = list(model.parameters())

    if configuration == "summed":

        def step(x: Tensor, y: Tensor) -> None:
            optimizer.zero_grad()
            criterion(model(x), y).mean().backward()
            optimizer.step()

    elif configuration in ("autogram", "autogram_mean"):
        engine = Engine(model, batch_dim=0)
        weighting: Weighting = UPGradWeighting() if configuration == "autogram" else MeanWeighting()

        def step(x: Tensor, y: Tensor) -> None:
            optimizer.zero_grad()
            losses = criterion(model(x), y)
            weights = weighting(engine.compute_gramian(losses))
            losses.backward(weights)
            optimizer.step()

    elif configuration in CHUNK_SIZES:
        from jdoptim import autojac

        aggregator = UPGrad()
        chunk_size = CHUNK_SIZES[configuration]

        def step(x: Tensor, y: Tensor) -> None:
            optimizer.zero_grad()
            losses = criterion(model(x), y)
            autojac.backward(losses, inputs=params, parallel_chunk_size=chunk_size)
            autojac.jac_to_grad(params, aggregator)
            optimizer.step()

    else:
        raise ValueError(
            f"`configuration` must be one of {CONFIGURATIONS}, but got {configuration!r}."
        )
    return step


def _batch(size: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (size,), generator=generator)
    return x, y


def _available(configurations: tuple[str, ...]) -> tuple[str, ...]:
    try:
        import jdoptim.autojac  # noqa: F401
    except ImportError:
        return tuple(c for c in configurations if not c.startswith("autojac"))
    return configurations


def measure_times(
    configurations: tuple[str, ...] = CONFIGURATIONS, batch_size: int = 64, repeats: int = 20
) -> dict[str, float]:
    """Median time in seconds of one step of each configuration (interleaved repeats)."""
    torch.manual_seed(0)
    x, y = _batch(batch_size)
    steps = {c: make_step(c, make_cnn()) for c in configurations}
    for step in steps.values():
        step(x, y)  # Warm-up.
    samples: dict[str, list[float]] = {c: [] for c in configurations}
    for _ in range(repeats):
        for configuration, step in steps.items():
            start = time.perf_counter()
            step(x, y)
            samples[configuration].append(time.perf_counter() - start)
    return {c: statistics.median(s) for c, s in samples.items()}


def peak_memory_of_one_step(configuration: str, batch_size: int = 64) -> int:
    """Growth in bytes of the peak resident set size during one step (run in this process)."""
    torch.manual_seed(0)
    model = make_cnn()
    step = make_step(configuration, model)
    step(*_batch(2))  # Lazy initialisation, with a negligible peak.
    x, y = _batch(batch_size)
    return peak_growth_bytes(lambda: step(x, y))


def measure_peak_memory(
    configurations: tuple[str, ...] = CONFIGURATIONS, batch_size: int = 64
) -> dict[str, int]:
    """:func:`peak_memory_of_one_step` of each configuration, each in a fresh subprocess."""
    peaks = {}
    for configuration in configurations:
        completed = subprocess.run(
            [
                sys.executable,
                __file__,
                "--peak-memory-of",
                configuration,
                "--batch-size",
                str(batch_size),
            ],
            check=True,
            capture_output=True,
            text=True,
            # Large blocks from mmap, released at once: the resident size follows the tensors.
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        peaks[configuration] = int(completed.stdout.strip().splitlines()[-1])
    return peaks


def run(batch_size: int = 64, repeats: int = 20) -> dict[str, dict[str, float]]:
    """Times, peak memories, and their ratios to the summed-loss step, per configuration."""
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    configurations = _available(CONFIGURATIONS)
    times = measure_times(configurations, batch_size, repeats)
    peaks = measure_peak_memory(configurations, batch_size)
    return {
        c: {
            "time_s": times[c],
            "time_ratio": times[c] / times["summed"],
            "peak_bytes": float(peaks[c]),
            "peak_ratio": peaks[c] / peaks["summed"] if peaks["summed"] else float("nan"),
        }
        for c in configurations
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--peak-memory-of", choices=CONFIGURATIONS)
    arguments = parser.parse_args()
    if arguments.peak_memory_of is not None:
        print(peak_memory_of_one_step(arguments.peak_memory_of, arguments.batch_size))
        return
    results = run(arguments.batch_size, arguments.repeats)
    print(
        f"{'configuration':<14}{'time (ms)':>12}{'× summed':>10}{'peak (MiB)':>12}{'× summed':>10}"
    )
    for configuration, result in results.items():
        print(
            f"{configuration:<14}{result['time_s'] * 1e3:>12.2f}{result['time_ratio']:>10.2f}"
            f"{result['peak_bytes'] / 2**20:>12.1f}{result['peak_ratio']:>10.2f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
