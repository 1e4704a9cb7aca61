"""Runs a test function on two `gloo` ranks on loopback, with a bounded time and clean shutdown."""

from __future__ import annotations

import datetime
import os
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    rank: int, port: int, fn: Callable[..., Any], out_dir: str, args: tuple[Any, ...]
) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        result = fn(rank, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_on_two_ranks(fn: Callable[..., Any], out_dir: Path, *args: Any) -> list[Any]:
    """Runs ``fn(rank, *args)`` in two processes and returns what each rank returned."""
    port = free_port()
    context = mp.start_processes(
        _worker,
        args=(port, fn, str(out_dir), args),
        nprocs=WORLD_SIZE,
        join=False,
        start_method="spawn",
    )
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=2 * TIMEOUT_S)
    try:
        while not context.join(timeout=1):
            if datetime.datetime.now() > deadline:
                raise TimeoutError("the distributed test did not finish in time")
    except Exception as error:
        messages = [p.read_text() for p in sorted(out_dir.glob("rank*.err"))]
        raise AssertionError("\n".join(messages) or str(error)) from error
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
