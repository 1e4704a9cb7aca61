"""Independent pieces of CPU work spread over the threads that torch may use.

Torch runs a batch of small factorisations (``cholesky_ex`` on ``[count, s, s]``) one matrix
after the other on one thread, however many threads it is allowed; the torch dual-cone solver
has many such independent batches (one per chunk of problems). :func:`run_in_parallel` runs
them on up to ``torch.get_num_threads()`` threads: the caller's and those of a small pool, made
on first use and made again in a process forked from the one that made it (threads do not
survive a fork). Torch releases the GIL inside its operators, so the pieces really overlap.

For large pieces (``one_thread_each``), every thread taking part runs torch's operators on one
thread while they run (``torch.set_num_threads(1)``, a per-thread setting; the caller's is
restored afterwards): otherwise each of them starts its own team of ``torch.get_num_threads()``
OpenMP threads for its gathers and sums, more threads than cores, which compete with the
factorisations. For small pieces switching the setting costs more than it saves (see
``_ONE_THREAD_EACH_WORK`` in :mod:`._torch_blocks`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")

_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_POOL_KEY: tuple[int, int] = (0, 0)  # (process id, threads) of the pool


def parallel_threads() -> int:
    """How many threads :func:`run_in_parallel` would use for enough pieces."""
    return max(1, torch.get_num_threads())


def run_in_parallel(jobs: list[Callable[[], T]], one_thread_each: bool = True) -> list[T]:
    """The results of ``jobs``, run on up to :func:`parallel_threads` threads at once.

    The jobs are dealt in turn to the threads (the caller's first), so that jobs sorted by size
    share the work evenly; each runs under the caller's grad and inference modes, and with
    ``one_thread_each`` on one intra-op thread (otherwise on as many as the caller). If one
    raises, the others are still waited for, then the first error is raised.
    """
    threads = min(len(jobs), parallel_threads())
    if threads <= 1:
        return [job() for job in jobs]
    pool = _pool(threads - 1)
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    caller_threads = torch.get_num_threads()
    each = 1 if one_thread_each else caller_threads

    def run_share(share: list[int]) -> list[T]:
        if torch.get_num_threads() != each:
            torch.set_num_threads(each)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return [jobs[index]() for index in share]

    shares = [list(range(start, len(jobs), threads)) for start in range(threads)]
    futures: list[Future[list[T]]] = [pool.submit(run_share, share) for share in shares[1:]]
    results: list[T | None] = [None] * len(jobs)
    error: BaseException | None = None
    try:
        for index, result in zip(shares[0], run_share(shares[0]), strict=True):
            results[index] = result
    except BaseException as raised:
        error = raised
    for share, future in zip(shares[1:], futures, strict=True):
        try:
            for index, result in zip(share, future.result(), strict=True):
                results[index] = result
        except BaseException as raised:
            error = error or raised
    if one_thread_each:
        # After every piece: the last setting made is the caller's own again (torch also keeps
        # it as the default of threads started later).
        torch.set_num_threads(caller_threads)
    if error is not None:
        raise error
    return results  # type: ignore[return-value]  # every index was filled


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_KEY
    key = (os.getpid(), workers)
    with _LOCK:
        if _POOL is None or key != _POOL_KEY:
            if _POOL is not None and _POOL_KEY[0] == key[0]:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="jdoptim-solver")
            _POOL_KEY = key
        return _POOL
