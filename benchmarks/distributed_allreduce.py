"""Cost of the cross-rank ``all_reduce`` of ``JacobianOptimizer(process_group=...)``.

Workload: the 4×512 MLP trunk (``384 → 512 → 512 → 512 → 512 → m``,
m = 8 outputs, 989,192 float32 parameters), loss i = the mean squared error of output i (m = 8
mean-reduced losses), a global batch of 64 split in halves over 2 ranks, ``gloo`` on loopback
(127.0.0.1), one CPU thread per rank, ``UPGrad`` and SGD.

Each rank times, per step, the whole step (forward + ``opt.step(losses)``) and, inside it, the
``all_reduce`` of the Jacobian buffer. Before that ``all_reduce``, an untimed barrier lines the
ranks up, so the figure is the transfer itself and not the wait for the slower rank; the rest of
the step is the step minus barrier and ``all_reduce``. The bytes communicated per step are those
of the reduced buffer (m × N values). For scale, the same is measured for the summed-loss step of
a ``DistributedDataParallel`` model (its gradient all-reduce moves N values, in buckets, inside
``backward``; only the whole step is timed there).

Figures are medians over the measured steps (after warm-up steps), rank 0.

Run: ``PYTHONPATH=. python benchmarks/distributed_allreduce.py [--steps 20] [--losses 8]``
(``--json`` for machine-readable output).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from autojac_memory import BATCH, INPUT, make_mlp
from torch import nn

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _jacobian_descent(rank: int, losses: int, warmup: int, steps: int) -> dict[str, Any]:
    from jdoptim import JacobianOptimizer
    from jdoptim.aggregation import UPGrad

    torch.manual_seed(0)
    model = make_mlp(losses)
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=1e-3), UPGrad(), process_group=dist.group.WORLD
    )
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(BATCH // WORLD_SIZE, INPUT, generator=generator)
    y = torch.randn(BATCH // WORLD_SIZE, losses, generator=generator)

    original = dist.all_reduce
    record: dict[str, float] = {}

    def timed_all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        dist.barrier()
        middle = time.perf_counter()
        result = original(tensor, *args, **kwargs)
        end = time.perf_counter()
        record["barrier"] = middle - start
        record["all_reduce"] = end - middle
        record["bytes"] = tensor.numel() * tensor.element_size()
        return result

    dist.all_reduce = timed_all_reduce  # type: ignore[assignment]
    rows = []
    try:
        for step in range(warmup + steps):
            dist.barrier()
            start = time.perf_counter()
            opt.zero_grad()
            opt.step((model(x) - y).square().mean(dim=0))
            total = time.perf_counter() - start
            if step >= warmup:
                rest = total - record["barrier"] - record["all_reduce"]
                rows.append((record["all_reduce"], rest, record["bytes"]))
    finally:
        dist.all_reduce = original
    return {
        "all_reduce_s": statistics.median(r[0] for r in rows),
        "rest_s": statistics.median(r[1] for r in rows),
        "bytes_per_step": rows[0][2],
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _ddp_summed(rank: int, losses: int, warmup: int, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = make_mlp(losses)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(BATCH // WORLD_SIZE, INPUT, generator=generator)
    y = torch.randn(BATCH // WORLD_SIZE, losses, generator=generator)
    times = []
    for step in range(warmup + steps):
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad()
        (ddp(x) - y).square().mean(dim=0).sum().backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    n = sum(p.numel() for p in model.parameters())
    return {"step_s": statistics.median(times), "bytes_per_step": 4 * n}


def _worker(rank: int, port: int, out: str, losses: int, warmup: int, steps: int) -> None:
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
            "jacobian_descent": _jacobian_descent(rank, losses, warmup, steps),
            "ddp_summed": _ddp_summed(rank, losses, warmup, steps),
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()  # no rank closes its connections while the other still reads from them
    finally:
        dist.destroy_process_group()


def run(losses: int = 8, warmup: int = 3, steps: int = 20) -> dict[str, Any]:
    """Runs the benchmark on two spawned ranks; returns rank 0's figures."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _worker,
            args=(_free_port(), out, losses, warmup, steps),
            nprocs=WORLD_SIZE,
            start_method="spawn",
        )
        return dict(json.loads(Path(out, "rank0.json").read_text()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", type=int, default=8, help="m, the number of losses")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first")
    parser.add_argument("--steps", type=int, default=20, help="measured steps")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    result = run(args.losses, args.warmup, args.steps)
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    jd, ddp = result["jacobian_descent"], result["ddp_summed"]
    step = jd["all_reduce_s"] + jd["rest_s"]
    print(
        f"m = {args.losses}, {jd['parameters']:,} parameters, batch {BATCH} over {WORLD_SIZE} "
        f"gloo ranks (loopback), medians of {args.steps} steps, rank 0"
    )
    print(
        f"JacobianOptimizer(UPGrad) step: {1e3 * step:8.1f} ms = all_reduce "
        f"{1e3 * jd['all_reduce_s']:.1f} ms ({100 * jd['all_reduce_s'] / step:.0f} %) + rest "
        f"{1e3 * jd['rest_s']:.1f} ms; {jd['bytes_per_step'] / 1e6:.1f} MB reduced per step"
    )
    print(
        f"DDP summed-loss step:           {1e3 * ddp['step_s']:8.1f} ms (gradient all-reduce "
        f"inside); {ddp['bytes_per_step'] / 1e6:.1f} MB reduced per step"
    )
    return result


if __name__ == "__main__":
    main()
