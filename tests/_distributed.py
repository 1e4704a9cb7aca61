"""Runs a test function on two `gloo` ranks on loopback, with a bounded time and clean shutdown.

The ranks meet through a file store in the test's own folder (no TCP store, no port to pick),
and gloo talks over the loopback interface only (``GLOO_SOCKET_IFNAME=lo``). What a rank prints
on its standard error, including what gloo or c10d print before an abort, is kept in
``rank<r>.log`` and reported when the run fails.
"""

from __future__ import annotations

import datetime
import os
import socket
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
TIMEOUT_S = 60
LOOPBACK_ENV = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, fn: Callable[..., Any], out_dir: str, args: tuple[Any, ...]) -> None:
    folder = Path(out_dir)
    log = os.open(folder / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 2)
    os.environ.update(LOOPBACK_ENV)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder / 'store'}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        result = fn(rank, *args)
        torch.save(result, folder / f"rank{rank}.pt")
        # No rank closes its connections while the other may still read from them: gloo aborts
        # the process whose peer vanished mid-read.
        dist.barrier()
        (folder / f"rank{rank}.done").touch()
    except BaseException:
        (folder / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _run_once(fn: Callable[..., Any], out_dir: Path, args: tuple[Any, ...]) -> list[Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    context = mp.start_processes(
        _worker, args=(fn, str(out_dir), args), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=2 * TIMEOUT_S)
    try:
        while not context.join(timeout=1):
            if datetime.datetime.now() > deadline:
                raise TimeoutError("the distributed test did not finish in time")
    except mp.ProcessExitedException as error:
        # Both ranks saved their results and met at the final barrier: the signal came while the
        # process group was being torn down, after the last collective, so the results stand.
        finished = all((out_dir / f"rank{rank}.done").exists() for rank in range(WORLD_SIZE))
        if error.signal_name is None or not finished:
            raise
        warnings.warn(
            f"a rank died by {error.signal_name} while shutting its process group down\n"
            + _report(out_dir),
            RuntimeWarning,
            stacklevel=3,
        )
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


def _report(out_dir: Path) -> str:
    parts = [p.read_text() for p in sorted(out_dir.glob("rank*.err"))]
    logs = [p for p in sorted(out_dir.glob("rank*.log")) if p.stat().st_size]
    parts += [f"{p.name}:\n{p.read_text()}" for p in logs]
    return "\n".join(parts)


def run_on_two_ranks(fn: Callable[..., Any], out_dir: Path, *args: Any) -> list[Any]:
    """Runs ``fn(rank, *args)`` in two processes and returns what each rank returned.

    A Python error or a timeout on a rank fails at once. A rank killed by a signal without a
    Python error (gloo's transport aborting the process) is reported as a warning; if that
    happened after both ranks met at the final barrier the results are used, otherwise the run
    is made once more in a new folder, and a second failure fails.
    """
    first = out_dir / "attempt1"
    try:
        return _run_once(fn, first, args)
    except mp.ProcessExitedException as error:
        if error.signal_name is None or list(first.glob("rank*.err")):
            raise AssertionError(_report(first) or str(error)) from error
        warnings.warn(
            f"a rank died by {error.signal_name} outside Python; running once more\n"
            + _report(first),
            RuntimeWarning,
            stacklevel=2,
        )
    except Exception as error:
        raise AssertionError(_report(first) or str(error)) from error
    second = out_dir / "attempt2"
    try:
        return _run_once(fn, second, args)
    except Exception as error:
        raise AssertionError(_report(first) + "\n" + (_report(second) or str(error))) from error
