"""`UPGradWeighting` of two versions of jdoptim, call after call in one process.

On a machine whose speed drifts (a shared VM), two runs minutes apart can differ by 2×; two
versions alternated in one process see the same machine. The other version is imported from
a copy of its `jdoptim` package under another name (the package uses only relative imports)::

    git worktree add /tmp/before <revision>
    python benchmarks/ab_weighting.py /tmp/before/jdoptim            # this checkout's jdoptim
    python benchmarks/ab_weighting.py /tmp/before/jdoptim --sizes 64x32 512x1000
    python benchmarks/ab_weighting.py /tmp/before/jdoptim --processes 2

Prints one Markdown row per Gramian (of a random ``[m, n]`` Jacobian): the medians of the two
versions in ms and their ratio. With ``--processes R``, each version and size is timed in a
process of its own instead, the two versions alternated, ``R`` rounds (the medians of the rounds'
medians): for changes to the solver's threads, which two versions in one process share (their
thread pools and OpenMP teams compete for the cores and hide the difference).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

DEFAULT_SIZES = [f"{m}x{n}" for m in (64, 128, 256, 512, 1024) for n in (m // 2, 2 * m, 1000)]


def import_copy(package: Path, name: str) -> ModuleType:
    """The package at ``package`` imported under ``name`` (from a temporary copy)."""
    directory = Path(tempfile.mkdtemp())
    shutil.copytree(package, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(directory))
    return importlib.import_module(f"{name}.aggregation")


def repeats_for(m: int) -> int:
    return 15 if m <= 128 else 5 if m <= 256 else 3 if m <= 512 else 1


def _gramian(size: str) -> tuple[int, int, torch.Tensor]:
    m, n = (int(part) for part in size.split("x"))
    jacobian = torch.randn(m, n, generator=torch.Generator().manual_seed(0))
    return m, n, jacobian @ jacobian.T


def _child(package: Path, size: str) -> None:
    """Prints the median time in ms of ``UPGradWeighting`` of the package at ``package``."""
    aggregation = import_copy(package, "jdoptim_measured")
    m, _, gramian = _gramian(size)
    weighting = aggregation.UPGradWeighting()
    weighting(gramian)  # warm-up: workspaces, thread pool
    times = []
    for _ in range(4 * repeats_for(m)):
        start = time.perf_counter()
        weighting(gramian)
        times.append(time.perf_counter() - start)
    print(statistics.median(times) * 1e3)


def _in_processes(before: Path, sizes: list[str], rounds: int, threads: int) -> None:
    after = Path(__file__).resolve().parents[1] / "jdoptim"
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for size in sizes:
        medians: tuple[list[float], list[float]] = ([], [])
        for _ in range(rounds):
            for package, measured in zip((before, after), medians, strict=True):
                completed = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        str(package),
                        "--child",
                        size,
                        "--threads",
                        str(threads),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=environment,
                )
                measured.append(float(completed.stdout.strip().splitlines()[-1]))
        first, second = (statistics.median(m) for m in medians)
        m, n = size.split("x")
        print(f"| [{m}, {n}] | {first:.3g} | {second:.3g} | {second / first:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the other version's `jdoptim` directory")
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="m x n, e.g. 64x32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--processes", type=int, default=0, help="rounds of one process per version and size"
    )
    parser.add_argument("--child", metavar="SIZE", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    if arguments.child is not None:
        _child(arguments.before, arguments.child)
        return
    print("| `[m, n]` | before (ms) | after (ms) | after / before |\n|---|---|---|---|")
    if arguments.processes > 0:
        _in_processes(arguments.before, arguments.sizes, arguments.processes, arguments.threads)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jdoptim.aggregation as after

    before = import_copy(arguments.before, "jdoptim_before")
    weightings = before.UPGradWeighting(), after.UPGradWeighting()
    for size in arguments.sizes:
        m, n, gramian = _gramian(size)
        if m <= 256:
            for weighting in weightings:
                weighting(gramian)  # warm-up: workspaces, thread pool
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(repeats_for(m)):
            for weighting, measured in zip(weightings, times, strict=True):
                start = time.perf_counter()
                weighting(gramian)
                measured.append(time.perf_counter() - start)
        first, second = (statistics.median(t) * 1e3 for t in times)
        print(f"| [{m}, {n}] | {first:.3g} | {second:.3g} | {second / first:.2f} |", flush=True)


if __name__ == "__main__":
    main()
