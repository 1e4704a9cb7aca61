"""``JacobianOptimizer.step`` against the same low-level calls written by hand.

One training step of the MLP trunk of the performance suite (4 hidden layers of 512 units,
batch 64) with ``m`` losses (one mean squared error per output), in three configurations:

- ``summed``: ``losses.sum().backward()`` + Adam step (the floor, for context);
- ``hand-written``: ``autojac.backward(losses, inputs=params)`` +
  ``autojac.jac_to_grad(params, UPGrad())`` + Adam step;
- ``JacobianOptimizer``: ``JacobianOptimizer(Adam(...), UPGrad()).step(losses)``.

The figure of merit is the ratio ``JacobianOptimizer / hand-written`` (target ≤ 1.02). Times are
medians of repeated steps in one process, the configurations interleaved in a shuffled order so
that the noise of a shared machine (and the state a step leaves behind) hits them alike; every
configuration trains its own copy of the same model. Both the wall-clock time and the CPU time
of the process are recorded: on a loaded machine the CPU time (with ``--threads 1``, so that no
thread waits for another) is the steadier of the two.
Peak memory is measured for each configuration in its own subprocess, as the growth of the peak
resident set size during one step over the resident size just before it.

Run ``PYTHONPATH=. python benchmarks/optimizer_overhead.py``; other scripts call :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from _memory import peak_growth_bytes
from torch import Tensor, nn

CONFIGURATIONS = ("summed", "hand-written", "JacobianOptimizer")


def make_mlp(m: int, width: int = 512, depth: int = 4, inputs: int = 64) -> nn.Module:
    """The MLP trunk of the suite (``depth`` hidden layers of ``width``) with ``m`` outputs."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, m))
    return nn.Sequential(*layers)


def make_step(configuration: str, model: nn.Module) -> Callable[[Tensor, Tensor], None]:
    """One training step of ``configuration`` on ``model``, as a function of ``(x, y)``."""
    from jdoptim import JacobianOptimizer, autojac
    from jdoptim.aggregation import UPGrad

    params = list(model.parameters())
    adam = torch.optim.Adam(params, lr=1e-6)

    def losses_of(x: Tensor, y: Tensor) -> Tensor:
        return ((model(x) - y) ** 2).mean(dim=0)

    if configuration == "summed":

        def step(x: Tensor, y: Tensor) -> None:
            adam.zero_grad()
            losses_of(x, y).sum().backward()
            adam.step()

    elif configuration == "hand-written":
        aggregator = UPGrad()

        def step(x: Tensor, y: Tensor) -> None:
            adam.zero_grad()
            autojac.backward(losses_of(x, y), inputs=params)
            autojac.jac_to_grad(params, aggregator)
            adam.step()

    elif configuration == "JacobianOptimizer":
        optimizer = JacobianOptimizer(adam, UPGrad())

        def step(x: Tensor, y: Tensor) -> None:
            optimizer.zero_grad()
            optimizer.step(losses_of(x, y))

    else:
        raise ValueError(
            f"`configuration` must be one of {CONFIGURATIONS}, but got {configuration!r}."
        )
    return step


def _batch(m: int, batch_size: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 64, generator=generator), torch.randn(
        batch_size, m, generator=generator
    )


def measure_times(m: int, batch_size: int = 64, repeats: int = 30) -> dict[str, dict[str, float]]:
    """Median wall-clock and CPU time in seconds of one step of each configuration."""
    x, y = _batch(m, batch_size)
    steps = {c: make_step(c, make_mlp(m)) for c in CONFIGURATIONS}
    for step in steps.values():
        step(x, y)  # Warm-up.
        step(x, y)
    wall: dict[str, list[float]] = {c: [] for c in CONFIGURATIONS}
    cpu: dict[str, list[float]] = {c: [] for c in CONFIGURATIONS}
    order = list(steps.items())
    shuffler = random.Random(0)
    for _ in range(repeats):
        shuffler.shuffle(order)  # no configuration always runs right after another one
        for configuration, step in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            step(x, y)
            wall[configuration].append(time.perf_counter() - start)
            cpu[configuration].append(time.process_time() - start_cpu)
    return {
        c: {"wall_s": statistics.median(wall[c]), "cpu_s": statistics.median(cpu[c])}
        for c in CONFIGURATIONS
    }


def peak_memory_of_one_step(configuration: str, m: int, batch_size: int = 64) -> int:
    """Growth in bytes of the peak resident set size during one step (run in this process)."""
    step = make_step(configuration, make_mlp(m))
    x, y = _batch(m, batch_size)
    step(x, y)  # Lazy initialisation (Adam's state) is not counted.
    return peak_growth_bytes(lambda: step(x, y))


def measure_peak_memory(m: int, batch_size: int = 64) -> dict[str, int]:
    """:func:`peak_memory_of_one_step` of each configuration, each in a fresh subprocess."""
    peaks = {}
    for configuration in CONFIGURATIONS:
        completed = subprocess.run(
            [
                sys.executable,
                __file__,
                "--peak-memory-of",
                configuration,
                "--m",
                str(m),
                "--batch-size",
                str(batch_size),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        peaks[configuration] = int(completed.stdout.strip().splitlines()[-1])
    return peaks


def run(
    ms: tuple[int, ...] = (2, 8),
    batch_size: int = 64,
    repeats: int = 30,
    memory: bool = True,
    threads: int | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per ``m``: times, their ratios to the hand-written calls, and peak memory."""
    if threads is not None:
        torch.set_num_threads(threads)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for m in ms:
        times = measure_times(m, batch_size, repeats)
        peaks = measure_peak_memory(m, batch_size) if memory else {}
        reference = times["hand-written"]
        results[f"m={m}"] = {
            c: {
                "wall_s": times[c]["wall_s"],
                "wall_ratio": times[c]["wall_s"] / reference["wall_s"],
                "cpu_s": times[c]["cpu_s"],
                "cpu_ratio": times[c]["cpu_s"] / reference["cpu_s"],
                "peak_bytes": float(peaks.get(c, float("nan"))),
            }
            for c in CONFIGURATIONS
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, nargs="+", default=[2, 8], help="numbers of losses")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--peak-memory-of", choices=CONFIGURATIONS)
    arguments = parser.parse_args()
    if arguments.peak_memory_of is not None:
        m, batch_size = arguments.m[0], arguments.batch_size
        print(peak_memory_of_one_step(arguments.peak_memory_of, m, batch_size))
        return
    results = run(
        tuple(arguments.m),
        arguments.batch_size,
        arguments.repeats,
        not arguments.no_memory,
        arguments.threads,
    )
    print(
        f"{'m':<6}{'configuration':<20}{'wall (ms)':>10}{'ratio':>8}{'cpu (ms)':>10}{'ratio':>8}"
        f"{'peak (MiB)':>12}"
    )
    for key, by_configuration in results.items():
        for configuration, result in by_configuration.items():
            print(
                f"{key:<6}{configuration:<20}{result['wall_s'] * 1e3:>10.2f}"
                f"{result['wall_ratio']:>8.3f}{result['cpu_s'] * 1e3:>10.2f}"
                f"{result['cpu_ratio']:>8.3f}{result['peak_bytes'] / 2**20:>12.1f}"
            )
    print("(ratios: to the hand-written autojac.backward + jac_to_grad + step)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
