"""The first guess of the torch dual-cone solver's free sets (ADMM steps on all problems)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor

from jdoptim.aggregation._checks import normalize
from jdoptim.aggregation._dual_cone import _guess, solve_dual_cone
from jdoptim.aggregation._dual_cone._jitter import jittered
from jdoptim.aggregation._dual_cone._preprocess import prepare
from jdoptim.aggregation._dual_cone._problem import Problem


def _upgrad_problem(jacobian: Tensor, reg_eps: float) -> Problem | Tensor:
    """UPGrad's problems on the regularised Gramian of ``jacobian``, prepared for a solver (or
    their answer, for a zero Gramian, which needs no solver)."""
    m = jacobian.shape[0]
    identity = torch.eye(m, dtype=torch.float64)
    gramian = normalize(jacobian @ jacobian.T, 1e-4) + reg_eps * identity
    return prepare(gramian, identity / m)


def _structured_jacobian(m: int, structure: str, generator: torch.Generator) -> Tensor:
    """Rank-deficient, 1e12-conditioned, duplicated-row or zero-row Jacobians."""
    jacobian = torch.randn(m, 2 * m, generator=generator, dtype=torch.float64)
    if structure == "rank_deficient":
        return jacobian[:, : max(1, m // 4)] @ jacobian[: max(1, m // 4)]
    if structure == "ill_conditioned":
        left, _ = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))
        right, _ = torch.linalg.qr(jacobian.T)
        return left @ torch.diag(torch.logspace(0, -6, m, dtype=torch.float64)) @ right.T
    if structure == "duplicated_rows":
        return jacobian[torch.randint(0, max(1, m // 2), (m,), generator=generator)]
    return jacobian * (torch.rand(m, 1, generator=generator, dtype=torch.float64) > 0.3)


@settings(max_examples=60, derandomize=True)
@given(
    m=st.integers(min_value=1, max_value=64),
    structure=st.sampled_from(("rank_deficient", "ill_conditioned", "duplicated_rows", "zero")),
    reg_eps=st.sampled_from((1e-4, 0.0)),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_guess_is_feasible_and_exact_on_its_active_indices(
    m: int, structure: str, reg_eps: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    problem = _upgrad_problem(_structured_jacobian(m, structure, generator), reg_eps)
    assume(isinstance(problem, Problem))
    assert isinstance(problem, Problem)
    # The Gramian the solver hands to the guess: on the first rung of the jitter ladder.
    g = jittered(problem.gramian, problem.first_jitter)
    u = problem.lower_bounds

    guess = _guess.guess_by_admm(g, u)

    assert guess.shape == u.shape and guess.dtype == torch.float64
    assert torch.isfinite(guess).all()
    assert (guess >= u).all()
    # The pivoting reads the free sets from guess > u: elsewhere the guess is u bit for bit.
    assert torch.equal(guess[guess <= u], u[guess <= u])


@pytest.mark.parametrize(("m", "n"), [(64, 32), (128, 64), (128, 1000), (256, 128), (320, 160)])
def test_guess_finds_the_exact_free_sets_of_most_problems(m: int, n: int) -> None:
    # Rank-deficient (n < m, condition numbers near 1e3 with reg_eps = 1e-4) and full-rank
    # Jacobians alike: the pivoting then has one problem in ten or fewer left to correct.
    generator = torch.Generator().manual_seed(m + n)
    problem = _upgrad_problem(torch.randn(m, n, generator=generator, dtype=torch.float64), 1e-4)
    assert isinstance(problem, Problem)
    g, u = problem.gramian, problem.lower_bounds
    # The torch solver's answer is the exact solution of its final split (checked against
    # quadprog elsewhere): its active coordinates are u bit for bit.
    exact_free = solve_dual_cone(g, u, "torch") > u

    guess = _guess.guess_by_admm(g, u)

    mismatches = ((guess > u) != exact_free).sum(dim=1)
    assert (mismatches == 0).float().mean() >= 0.9
    assert mismatches.max() <= 3


def test_guess_of_a_matrix_that_is_not_positive_definite_is_the_bounds() -> None:
    u = torch.eye(3, dtype=torch.float64)
    negative = -torch.eye(3, dtype=torch.float64)

    assert torch.equal(_guess.guess_by_admm(negative, u), u)
    nan = torch.full((3, 3), torch.nan, dtype=torch.float64)
    assert torch.equal(_guess.guess_by_admm(nan, u), u)


@pytest.mark.parametrize("m", [50, 200])
@pytest.mark.parametrize("smallest", [1e-3, 1e-10])
def test_admm_penalty_is_the_geometric_mean_of_the_eigenvalues(m: int, smallest: float) -> None:
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))
    eigenvalues = torch.logspace(math.log10(smallest), 0, m, dtype=torch.float64)
    eigenvalues[-1] = 2.0
    matrix = basis @ torch.diag(eigenvalues) @ basis.T
    expected = float(eigenvalues.log().mean().exp())

    # From the pivots of a Cholesky factor, computed here or handed over by the solver.
    rho = _guess.admm_penalty(matrix)
    from_factor = _guess.admm_penalty(matrix, torch.linalg.cholesky(matrix))

    assert rho == pytest.approx(expected, rel=1e-4)
    assert from_factor == rho


def test_admm_penalty_counts_pivots_below_the_precision_at_its_floor() -> None:
    # A factor whose last pivot is rounding noise (a flat direction) moves ρ only down to the
    # floor 1e-24 of the largest diagonal entry, for that pivot's share 1/m.
    m = 4
    matrix = torch.eye(m, dtype=torch.float64)
    factor = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1e-200], dtype=torch.float64))

    rho = _guess.admm_penalty(matrix, factor)

    assert rho == pytest.approx(1e-24 ** (1 / m), rel=1e-12)


def test_admm_penalty_of_a_matrix_that_is_not_positive_definite_is_none() -> None:
    assert _guess.admm_penalty(-torch.eye(3, dtype=torch.float64)) is None
    assert _guess.admm_penalty(torch.full((3, 3), torch.nan, dtype=torch.float64)) is None


def test_above_256_objectives_the_guess_stops_once_nearly_every_pattern_settled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(0)
    problem = _upgrad_problem(torch.randn(320, 160, generator=generator, dtype=torch.float64), 1e-4)
    assert isinstance(problem, Problem)
    g, u = problem.gramian, problem.lower_bounds
    steps = []  # one projection onto the bounds per ADMM step
    maximum = torch.maximum

    def counted(*args: Tensor) -> Tensor:
        steps.append(1)
        return maximum(*args)

    monkeypatch.setattr(_guess.torch, "maximum", counted)
    early = _guess.guess_by_admm(g, u)
    early_steps = len(steps)
    steps.clear()
    monkeypatch.setattr(_guess, "_SETTLE_EARLY_ABOVE_M", 320)
    settled = _guess.guess_by_admm(g, u)
    assert early_steps < len(steps)
    early_rows = ((early > u) != (settled > u)).any(dim=1).float().mean()
    assert early_rows <= 0.1  # the patterns it leaves to the pivoting


@pytest.mark.parametrize(("m", "n"), [(40, 20), (96, 1000)])
def test_the_numpy_steps_are_the_torch_steps(m: int, n: int) -> None:
    generator = torch.Generator().manual_seed(m)
    problem = _upgrad_problem(torch.randn(m, n, generator=generator, dtype=torch.float64), 1e-4)
    assert isinstance(problem, Problem)
    g, u = problem.gramian, problem.lower_bounds
    rho = _guess.admm_penalty(g)
    assert rho is not None
    identity = torch.eye(m, dtype=torch.float64)
    resolvent = (rho * torch.linalg.inv(g + rho * identity)).float()
    bounds = u.float()

    with_torch = _guess._admm_steps(resolvent, bounds, 0, torch.maximum)
    on_numpy = _guess._admm_steps(resolvent.numpy(), bounds.numpy(), 0, np.maximum)
    with_numpy = torch.from_numpy(on_numpy)

    # The same float32 steps; only the order of the sums in the products may differ.
    assert ((with_torch > bounds) != (with_numpy > bounds)).float().mean() <= 0.01
    torch.testing.assert_close(with_numpy, with_torch, rtol=1e-3, atol=1e-5)
