"""`UPGradWeighting` of two versions of jdoptim, call after call in one process.

On a machine whose speed drifts (a shared VM), two runs minutes apart can differ by 2×; two
versions alternated in one process see the same machine. The other version is imported from
a copy of its `jdoptim` package under another name (the package uses only relative imports)::

    git worktree add /tmp/before <revision>
    python benchmarks/ab_weighting.py /tmp/before/jdoptim            # this checkout's jdoptim
    python benchmarks/ab_weighting.py /tmp/before/jdoptim --sizes 64x32 512x1000

Prints one Markdown row per Gramian (of a random ``[m, n]`` Jacobian): the medians of the two
versions in ms and their ratio.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the other version's `jdoptim` directory")
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="m x n, e.g. 64x32")
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jdoptim.aggregation as after

    before = import_copy(arguments.before, "jdoptim_before")
    weightings = before.UPGradWeighting(), after.UPGradWeighting()
    print("| `[m, n]` | before (ms) | after (ms) | after / before |\n|---|---|---|---|")
    for size in arguments.sizes:
        m, n = (int(part) for part in size.split("x"))
        jacobian = torch.randn(m, n, generator=torch.Generator().manual_seed(0))
        gramian = jacobian @ jacobian.T
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
