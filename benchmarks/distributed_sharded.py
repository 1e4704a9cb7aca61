"""Traffic and time per step of distributed Jacobian descent: all-reduce, sharded, Gramian mode.

Workload: the 4×512 MLP trunk of ``autojac_memory`` (``384 → 512 ×4 → m``, about 1M float32
parameters), a global batch of 64 split in halves over 2 ``gloo`` ranks on loopback
(127.0.0.1), one CPU thread per rank, SGD. For each ``m``:

- ``all-reduce``: Jacobian mode, ``m`` mean-reduced losses, the whole ``[m, N]`` Jacobian
  all-reduced and aggregated by ``UPGrad`` on every rank;
- ``sharded``: the same step with sharded aggregation (reduce-scatter of the Jacobian by columns,
  all-reduce of the ``[m, m]`` Gramians, all-gather of the update), the optimizer's default for
  ``UPGrad``;
- ``gramian``: Gramian mode with a process group, one loss per sample (``batch_dim=0``, the 64
  losses of the global batch): the layers' inputs and output gradients are all-gathered, then the
  weighted gradient (``N`` values) is all-reduced.

Bytes are those each rank sends per step, from the sizes of the collectives' buffers with the
ring algorithms' factors (all-reduce ``2(R-1)/R`` of the buffer, reduce-scatter and all-gather
``(R-1)/R`` of the full buffer). Times are medians of the measured steps on rank 0.

Run: ``PYTHONPATH=. python benchmarks/distributed_sharded.py [--losses 2 8 32] [--steps 10]``
(``--json`` for machine-readable output). Timings mean something on a quiet machine only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from autojac_memory import BATCH, INPUT, make_mlp
from distributed_allreduce import _free_port

WORLD_SIZE = 2
# The share of its buffer that one rank sends, per collective, in a ring of WORLD_SIZE ranks.
_SENT = {
    "all_reduce": 2 * (WORLD_SIZE - 1) / WORLD_SIZE,
    "reduce_scatter_single": (WORLD_SIZE - 1) / WORLD_SIZE,
    "all_gather_single": (WORLD_SIZE - 1) / WORLD_SIZE,
    "all_gather": (WORLD_SIZE - 1),  # the buffer is one rank's part: it goes to every other
}


@contextmanager
def _metered(sent: list[float]) -> Iterator[None]:
    """Adds to ``sent`` the bytes each collective called in the body makes this rank send."""
    originals = {name: getattr(dist, name) for name in _SENT}

    def metered(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            # The full buffer: the input of a reduce-scatter, the output of an all-gather.
            buffer = tensors[1] if name == "reduce_scatter_single" else tensors[0]
            if name == "all_gather":
                buffer = args[1]
            sent.append(_SENT[name] * buffer.numel() * buffer.element_size())
            return originals[name](*args, **kwargs)

        return call

    for name in _SENT:
        setattr(dist, name, metered(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def _measure(
    rank: int, losses: int, path: str, warmup: int, steps: int, width: int
) -> dict[str, float]:
    import jdoptim.optim._sharded as sharded_module
    from jdoptim import JacobianOptimizer
    from jdoptim.aggregation import UPGrad
    from jdoptim.autogram import Engine

    torch.manual_seed(0)
    model = make_mlp(losses) if width == 512 else _small_mlp(losses, width)
    engine = Engine(model, batch_dim=0) if path == "gramian" else None
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=1e-3),
        UPGrad(),
        engine=engine,
        process_group=dist.group.WORLD,
    )
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(BATCH // WORLD_SIZE, INPUT, generator=generator)
    y = torch.randn(BATCH // WORLD_SIZE, losses, generator=generator)
    original = sharded_module.uses_sharding
    if path == "all-reduce":
        sharded_module.uses_sharding = lambda context, blocks: False  # type: ignore[assignment]
    times, traffic = [], []
    try:
        for step in range(warmup + steps):
            sent: list[float] = []
            dist.barrier()
            start = time.perf_counter()
            opt.zero_grad()
            squared = (model(x) - y).square()
            with _metered(sent):
                opt.step(squared.mean(dim=1) if path == "gramian" else squared.mean(dim=0))
            if step >= warmup:
                times.append(time.perf_counter() - start)
                traffic.append(sum(sent))
    finally:
        sharded_module.uses_sharding = original
    return {
        "step_s": statistics.median(times),
        "bytes_sent": statistics.median(traffic),
        "parameters": float(sum(p.numel() for p in model.parameters())),
    }


def _small_mlp(losses: int, width: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(INPUT, width), torch.nn.ReLU(), torch.nn.Linear(width, losses)
    )


PATHS = ("all-reduce", "sharded", "gramian")


def _worker(
    rank: int, port: int, out: str, losses: list[int], warmup: int, steps: int, width: int
) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo on the loopback interface only
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=300),
    )
    try:
        result = {
            f"m={m}/{path}": _measure(rank, m, path, warmup, steps, width)
            for m in losses
            for path in PATHS
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()  # no rank closes its connections while the other still reads from them
    finally:
        dist.destroy_process_group()


def run(
    losses: list[int] | None = None, warmup: int = 2, steps: int = 10, width: int = 512
) -> dict[str, Any]:
    """Runs the benchmark on two spawned ranks; returns rank 0's figures."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _worker,
            args=(_free_port(), out, losses or [2, 8, 32], warmup, steps, width),
            nprocs=WORLD_SIZE,
            start_method="spawn",
        )
        return dict(json.loads(Path(out, "rank0.json").read_text()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", type=int, nargs="+", default=[2, 8, 32], help="values of m")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--steps", type=int, default=10, help="measured steps")
    parser.add_argument("--width", type=int, default=512, help="hidden width (512: 4 layers)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    result = run(args.losses, args.warmup, args.steps, args.width)
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"batch {BATCH} over {WORLD_SIZE} gloo ranks (loopback), medians, rank 0")
    print(f"{'m':>3} {'path':<11} {'MB sent/rank':>12} {'step ms':>9}")
    for key, figures in result.items():
        m, path = key.split("/")
        print(
            f"{m[2:]:>3} {path:<11} {figures['bytes_sent'] / 1e6:12.2f} "
            f"{1e3 * figures['step_s']:9.1f}"
        )
    return result


if __name__ == "__main__":
    main()
