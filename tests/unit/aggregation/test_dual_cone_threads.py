"""Independent pieces of the CPU dual-cone solver run on several threads (`run_in_parallel`)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator

import pytest
import torch

from jdoptim.aggregation._dual_cone import _threads, solve_dual_cone


@pytest.fixture
def two_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_results_come_back_in_the_order_of_the_jobs(two_threads: None) -> None:
    jobs = [lambda i=i: (i, threading.get_ident()) for i in range(7)]
    results = _threads.run_in_parallel(jobs)
    assert [i for i, _ in results] == list(range(7))
    # Dealt in turn: the caller's thread runs jobs 0, 2, 4, 6 and one other thread the rest.
    caller = threading.get_ident()
    assert [thread == caller for _, thread in results] == [True, False] * 3 + [True]


def test_one_thread_runs_everything_in_the_caller() -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = _threads.run_in_parallel([threading.get_ident for _ in range(3)])
    finally:
        torch.set_num_threads(previous)
    assert results == [threading.get_ident()] * 3


def test_the_callers_grad_and_inference_modes_hold_in_every_job(two_threads: None) -> None:
    def modes() -> tuple[bool, bool]:
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    with torch.inference_mode():
        assert _threads.run_in_parallel([modes, modes]) == [(False, True)] * 2
    with torch.no_grad():
        assert _threads.run_in_parallel([modes, modes]) == [(False, False)] * 2
    assert _threads.run_in_parallel([modes, modes]) == [(True, False)] * 2


def test_every_job_runs_torch_on_one_thread_and_the_caller_gets_its_setting_back(
    two_threads: None,
) -> None:
    # Each participating thread would otherwise start its own team of OpenMP threads.
    results = _threads.run_in_parallel([torch.get_num_threads for _ in range(4)])
    assert results == [1, 1, 1, 1]
    assert torch.get_num_threads() == 2
    # Small pieces keep the caller's setting in every thread.
    results = _threads.run_in_parallel([torch.get_num_threads] * 4, one_thread_each=False)
    assert results == [2, 2, 2, 2]
    # Also after a job raised.
    with pytest.raises(ValueError, match="job"):
        _threads.run_in_parallel([torch.get_num_threads, _raise_value_error])
    assert torch.get_num_threads() == 2


def _raise_value_error() -> None:
    raise ValueError("job")


def test_an_error_is_raised_after_every_job_finished(two_threads: None) -> None:
    finished = []

    def fails() -> None:
        raise ValueError("job 0")

    def slow() -> None:
        threading.Event().wait(0.05)
        finished.append(1)

    with pytest.raises(ValueError, match="job 0"):
        _threads.run_in_parallel([fails, slow, fails, slow])
    assert finished == [1, 1]


def _solve_in_child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    torch.set_num_threads(2)
    queue.put(_threads.run_in_parallel([lambda: 1, lambda: 2]))


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_a_forked_process_makes_its_own_pool(two_threads: None) -> None:
    _threads.run_in_parallel([lambda: 0, lambda: 0])  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_solve_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == [1, 2]


@pytest.mark.parametrize(("m", "n"), [(160, 80), (160, 400)])
def test_the_solver_gives_the_same_answer_on_one_thread_and_on_two(m: int, n: int) -> None:
    generator = torch.Generator().manual_seed(m + n)
    jacobian = torch.randn(m, n, generator=generator, dtype=torch.float64)
    gramian = jacobian @ jacobian.T / n + 1e-4 * torch.eye(m, dtype=torch.float64)
    bounds = torch.eye(m, dtype=torch.float64)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = solve_dual_cone(gramian, bounds, "torch")
        torch.set_num_threads(2)
        shared = solve_dual_cone(gramian, bounds, "torch")
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(alone > bounds, shared > bounds)  # the same free sets
    torch.testing.assert_close(shared, alone, rtol=1e-10, atol=1e-12)
