"""The dual-cone QP ``v = argmin vᵀGv s.t. v ≥ u`` behind UPGrad and DualProj."""

from __future__ import annotations

import numpy as np
import pytest
import quadprog
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from jdoptim.aggregation._dual_cone import DualConeSolverError, _registry, solve_dual_cone
from jdoptim.aggregation._dual_cone._closed_form import solve_closed_form
from jdoptim.aggregation._dual_cone._jitter import ladder
from jdoptim.aggregation._dual_cone._preprocess import prepare
from jdoptim.aggregation._dual_cone._problem import Problem

# Contract tests that every dual-cone solver must pass.
SOLVERS = pytest.mark.parametrize("solver", ["quadprog", "torch"])


def _regularized_gramian(jacobian: Tensor, reg_eps: float = 1e-4) -> Tensor:
    gramian = jacobian @ jacobian.T
    identity = torch.eye(gramian.shape[0], dtype=gramian.dtype)
    return gramian / gramian.trace() + reg_eps * identity


def _random_jacobian(m: int, n: int, kind: str) -> Tensor:
    jacobian = torch.randn(m, n, dtype=torch.float64)
    if kind == "rank_deficient":
        rank = max(1, min(m, n) // 2)
        jacobian = torch.randn(m, rank, dtype=torch.float64) @ torch.randn(rank, n).double()
    elif kind == "badly_scaled":
        jacobian = jacobian * torch.logspace(-10, 15, m, dtype=torch.float64)[:, None]
    elif kind == "shared_direction":
        jacobian = jacobian + 3 * torch.randn(n, dtype=torch.float64)
    return jacobian


def _assert_kkt(gramian: Tensor, lower_bounds: Tensor, solutions: Tensor, atol: float) -> None:
    """Checks the optimality conditions: v ≥ u, Gv ≥ 0, and (Gv)_j = 0 where v_j > u_j."""
    products = solutions @ gramian  # row i is (G v_i)ᵀ, G being symmetric
    assert (solutions >= lower_bounds - atol).all()
    assert (products >= -atol).all()
    free = solutions > lower_bounds + 1e-7
    assert (products[free].abs() <= atol).all()


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 13, 21, 32])
@pytest.mark.parametrize("kind", ["gaussian", "rank_deficient", "badly_scaled", "shared_direction"])
def test_solutions_satisfy_the_kkt_conditions(m: int, kind: str) -> None:
    gramian = _regularized_gramian(_random_jacobian(m, 2 * m + 1, kind))
    lower_bounds = torch.diag(torch.rand(m, dtype=torch.float64))

    solutions = solve_dual_cone(gramian, lower_bounds, "quadprog")

    assert solutions.shape == (m, m)
    _assert_kkt(gramian, lower_bounds, solutions, atol=1e-10)


@pytest.mark.parametrize("m", [1, 4, 16, 32])
def test_matches_the_primal_problem_solved_by_quadprog(m: int) -> None:
    gramian = _regularized_gramian(_random_jacobian(m, m + 3, "gaussian"))
    lower_bounds = torch.randn(3, m, dtype=torch.float64)

    solutions = solve_dual_cone(gramian, lower_bounds, "quadprog")

    expected = np.stack(
        [
            quadprog.solve_qp(gramian.numpy(), np.zeros(m), np.eye(m), bound)[0]
            for bound in lower_bounds.numpy()
        ]
    )
    np.testing.assert_allclose(solutions.numpy(), expected, atol=1e-9)


@SOLVERS
def test_known_two_dimensional_solution(solver: str) -> None:
    # Two unit gradients at 120°: projecting g1 onto the dual cone adds half of g2.
    gramian = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)

    solutions = solve_dual_cone(gramian, torch.eye(2, dtype=torch.float64), solver)

    torch.testing.assert_close(
        solutions, torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    )


@SOLVERS
def test_non_conflicting_lower_bound_is_its_own_solution(solver: str) -> None:
    gramian = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    lower_bounds = torch.tensor([[0.3, 0.7]], dtype=torch.float64)

    assert torch.equal(solve_dual_cone(gramian, lower_bounds, solver), lower_bounds)


@SOLVERS
def test_scaled_identity_gives_the_positive_part_of_the_bounds(solver: str) -> None:
    gramian = 1e-4 * torch.eye(3, dtype=torch.float64)
    lower_bounds = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)

    solutions = solve_dual_cone(gramian, lower_bounds, solver)

    assert torch.equal(solutions, torch.tensor([[0.5, 0.0, 2.0]], dtype=torch.float64))


@SOLVERS
def test_single_objective(solver: str) -> None:
    gramian = torch.tensor([[4.0]])

    solutions = solve_dual_cone(gramian, torch.tensor([[0.5], [-2.0]]), solver)

    assert torch.equal(solutions, torch.tensor([[0.5], [0.0]]))


@SOLVERS
def test_zero_gramian_gives_the_positive_part_of_the_bounds(solver: str) -> None:
    solutions = solve_dual_cone(torch.zeros(2, 2), torch.tensor([[1.0, -1.0]]), solver)

    assert torch.equal(solutions, torch.tensor([[1.0, 0.0]]))


@SOLVERS
def test_singular_gramian_is_solved(solver: str) -> None:
    # Two opposite gradients: G is singular, and only v ∝ (1, 1) avoids the conflict.
    gramian = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    lower_bounds = torch.tensor([[1.0, 0.0]], dtype=torch.float64)

    solutions = solve_dual_cone(gramian, lower_bounds, solver)

    torch.testing.assert_close(solutions, torch.tensor([[1.0, 1.0]], dtype=torch.float64))


def test_ill_conditioned_gramian_satisfies_the_kkt_conditions() -> None:
    jacobian = torch.randn(6, 6, dtype=torch.float64)
    jacobian[5] = jacobian[4] + 1e-9 * torch.randn(6, dtype=torch.float64)
    gramian = jacobian @ jacobian.T
    lower_bounds = torch.eye(6, dtype=torch.float64)

    solutions = solve_dual_cone(gramian, lower_bounds, "quadprog")

    scale = gramian.diagonal().max().item()
    _assert_kkt(gramian, lower_bounds, solutions, atol=1e-6 * scale)


@SOLVERS
def test_huge_gramian_entries_are_solved(solver: str) -> None:
    gramian = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64) * 1e300

    solutions = solve_dual_cone(gramian, torch.eye(2, dtype=torch.float64), solver)

    torch.testing.assert_close(
        solutions, torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    )


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
@SOLVERS
def test_non_finite_gramian_gives_nan(bad_value: float, solver: str) -> None:
    gramian = torch.eye(3)
    gramian[0, 1] = bad_value

    solutions = solve_dual_cone(gramian, torch.eye(3), solver)

    assert solutions.shape == (3, 3)
    assert solutions.isnan().all()


@SOLVERS
def test_non_finite_lower_bounds_give_nan(solver: str) -> None:
    solutions = solve_dual_cone(torch.eye(2), torch.tensor([[float("nan"), 1.0]]), solver)

    assert solutions.isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_has_the_dtype_and_device_of_the_gramian(dtype: torch.dtype) -> None:
    gramian = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=dtype)

    solutions = solve_dual_cone(gramian, torch.eye(2, dtype=torch.float64), "quadprog")

    assert solutions.dtype == dtype
    assert solutions.device == gramian.device


@SOLVERS
def test_no_lower_bounds_gives_an_empty_result(solver: str) -> None:
    assert solve_dual_cone(torch.eye(3), torch.zeros(0, 3), solver).shape == (0, 3)


def test_unknown_solver_is_rejected() -> None:
    with pytest.raises(ValueError, match="solver"):
        solve_dual_cone(torch.eye(2), torch.eye(2), "cvxpy")


def test_non_string_solver_is_rejected() -> None:
    with pytest.raises(TypeError, match="solver"):
        solve_dual_cone(torch.eye(2), torch.eye(2), 1)  # type: ignore[arg-type]


def test_non_square_gramian_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"gramian.*\[2, 3\]"):
        solve_dual_cone(torch.zeros(2, 3), torch.eye(2), "quadprog")


def test_lower_bounds_of_the_wrong_width_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"lower_bounds.*\[2, 3\]"):
        solve_dual_cone(torch.eye(2), torch.zeros(2, 3), "quadprog")


@SOLVERS
def test_indefinite_matrix_is_rejected(solver: str) -> None:
    # Eigenvalues 51 and -49: no jitter up to max(diag) · I makes it positive definite.
    matrix = torch.tensor([[1.0, 50.0], [50.0, 1.0]])

    with pytest.raises(ValueError, match=r"gramian.*positive semi-definite"):
        solve_dual_cone(matrix, torch.tensor([[1.0, -1.0]]), solver)


@SOLVERS
def test_every_solver_raises_the_same_error(solver: str) -> None:
    matrix = torch.tensor([[1.0, 50.0], [50.0, 1.0]], dtype=torch.float64)

    with pytest.raises(DualConeSolverError):
        solve_dual_cone(matrix, torch.eye(2, dtype=torch.float64), solver)


def _first_jitter(gramian: Tensor) -> float:
    problem = prepare(gramian, torch.eye(gramian.shape[0], dtype=gramian.dtype))
    assert isinstance(problem, Problem)
    return ladder(problem)[0]


def test_the_first_jitter_follows_the_precision_of_the_input_dtype() -> None:
    # Smallest eigenvalue 2⁻²³ ≈ 1.2e-7: far above float64's rounding noise (m·ε₆₄ ≈ 4.4e-16),
    # within float32's (m·ε₃₂ ≈ 2.4e-7), even though the solvers compute in float64.
    off_diagonal = 1.0 - 2.0**-23
    gramian = torch.tensor([[1.0, off_diagonal], [off_diagonal, 1.0]], dtype=torch.float64)

    assert _first_jitter(gramian) == 0.0
    float32_noise = 2 * torch.finfo(torch.float32).eps
    assert _first_jitter(gramian.float()) == 2 * float32_noise


def test_a_singular_float64_gramian_gets_the_smallest_jitter() -> None:
    jacobian = torch.randn(30, 10, dtype=torch.float64)

    first = _first_jitter(jacobian @ jacobian.T)

    # max(2 m ε₆₄, 10⁶ ε₆₄): the float64 solves stay accurate in the directions where G vanishes.
    assert first == 1e6 * torch.finfo(torch.float64).eps


@SOLVERS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_singular_gramians_are_solved_up_to_the_precision_of_their_dtype(
    solver: str, dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(7)
    jacobian = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    gramian = (jacobian @ jacobian.T).to(dtype)
    lower_bounds = torch.eye(12, dtype=dtype) / 12

    solutions = solve_dual_cone(gramian, lower_bounds, solver).double()

    # KKT of G + δI with δ the first jitter: (G v)_i ≥ -δ · 2 G_ii v_i, plus rounding.
    jitter = _first_jitter(gramian)
    exact = jacobian @ jacobian.T
    assert (solutions >= lower_bounds.double()).all()
    products = solutions @ exact
    norms = exact.diagonal().sqrt()
    scale = norms * (solutions.abs() * norms).sum(dim=1, keepdim=True)
    rounding = 10 * torch.finfo(dtype).eps * 12
    assert (products >= -(2 * jitter + rounding) * scale).all()


def _record_solver_calls(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    """Replaces quadprog and the torch solver by stubs that record their name in ``calls``."""
    monkeypatch.setattr(
        _registry,
        "solve_with_quadprog",
        lambda g, u, **_: calls.append("quadprog") or torch.zeros_like(u),
    )
    monkeypatch.setattr(
        _registry,
        "solve_dual_cone_torch",
        lambda g, u, **_: calls.append("torch") or torch.zeros_like(u),
    )


def test_auto_solver_uses_closed_forms_then_quadprog_for_small_cpu_problems_and_torch_otherwise(
    monkeypatch,
) -> None:
    calls: list[str] = []
    closed_form = solve_closed_form
    monkeypatch.setattr(
        _registry,
        "solve_closed_form",
        lambda g, u: calls.append("closed form") or closed_form(g, u),
    )
    _record_solver_calls(monkeypatch, calls)
    for m in (1, 2, 3, _registry._AUTO_QUADPROG_MAX_M, _registry._AUTO_QUADPROG_MAX_M + 1):
        solve_dual_cone(
            torch.eye(m, dtype=torch.float64), torch.eye(m, dtype=torch.float64), "auto"
        )
    assert calls == ["closed form", "closed form", "quadprog", "quadprog", "torch"]
    # A singular or non-finite G of two objectives goes on to quadprog.
    calls.clear()
    for gramian in (torch.ones(2, 2), torch.tensor([[1.0, 0.0], [0.0, float("nan")]])):
        solve_dual_cone(gramian.double(), torch.eye(2, dtype=torch.float64), "auto")
    assert calls == ["closed form", "quadprog", "closed form", "quadprog"]
    # Beyond, a singular G goes to quadprog (solving in its range) up to a larger size.
    calls.clear()
    for m in (_registry._AUTO_QUADPROG_MAX_M + 1, _registry._AUTO_SINGULAR_QUADPROG_MAX_M + 1):
        solve_dual_cone(
            torch.ones(m, m, dtype=torch.float64), torch.eye(m, dtype=torch.float64), "auto"
        )
    assert calls == ["quadprog", "torch"]


def test_auto_solver_sends_ill_conditioned_gramians_to_quadprog_up_to_its_limit(
    monkeypatch,
) -> None:
    calls: list[str] = []
    _record_solver_calls(monkeypatch, calls)

    def gramian(m: int, n: int) -> Tensor:
        # UPGrad's regularised Gramian: rank-deficient Jacobians (n < m) give an ill-conditioned
        # but positive definite one (no jitter needed), full-rank ones a well-conditioned one.
        jacobian = torch.randn(
            m, n, generator=torch.Generator().manual_seed(m), dtype=torch.float64
        )
        product = jacobian @ jacobian.T
        return product / product.trace() + 1e-4 * torch.eye(m, dtype=torch.float64)

    limit = _registry._AUTO_ILL_CONDITIONED_QUADPROG_MAX_M
    assert _registry._AUTO_QUADPROG_MAX_M < limit < _registry._AUTO_SINGULAR_QUADPROG_MAX_M
    for m, n in ((limit, limit // 2), (limit, 1000), (limit + 1, limit // 2)):
        g = gramian(m, n)
        assert prepare(g, torch.eye(m, dtype=torch.float64)).first_jitter == 0.0
        solve_dual_cone(g, torch.eye(m, dtype=torch.float64), "auto")
    assert calls == ["quadprog", "torch", "torch"]
    # The criterion: the smallest Cholesky pivot, which bounds the smallest eigenvalue.
    assert _registry._is_ill_conditioned(torch.diag(torch.tensor([1.0, 1.0, 5e-3])).double())
    assert not _registry._is_ill_conditioned(torch.diag(torch.tensor([1.0, 1.0, 0.5])).double())
    assert _registry._is_ill_conditioned(-torch.eye(3, dtype=torch.float64))


def test_auto_solver_sends_singular_gramians_of_high_rank_to_the_torch_solver(
    monkeypatch,
) -> None:
    calls: list[str] = []
    _record_solver_calls(monkeypatch, calls)

    def singular(m: int, n: int) -> Tensor:
        # reg_eps = 0 with m > n: G is singular, of rank n.
        jacobian = torch.randn(
            m, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64
        )
        product = jacobian @ jacobian.T
        return product / product.trace()

    smallest = _registry._AUTO_SINGULAR_TORCH_MIN_M
    # Rank 3/4 of m from the threshold on (torch), below it (quadprog); rank m/2 and 5/8 of m
    # (quadprog, which solves in a range of that dimension); past the singular limit (torch).
    sizes = [
        (smallest, smallest * 3 // 4),
        (smallest - 8, (smallest - 8) * 3 // 4),
        (smallest, smallest // 2),
        (128, 80),
        (128, 96),
        (_registry._AUTO_SINGULAR_QUADPROG_MAX_M + 1, 64),
    ]
    for m, n in sizes:
        g = singular(m, n)
        assert prepare(g, torch.eye(m, dtype=torch.float64)).first_jitter > 0.0
        solve_dual_cone(g, torch.eye(m, dtype=torch.float64), "auto")
    assert calls == ["torch", "quadprog", "quadprog", "quadprog", "torch", "torch"]

    # The rank counts the Cholesky pivots of G + δ₀I above 1e-4 (of a diagonal G: its entries):
    # flatter directions do not count.
    def diagonal(small: float) -> Problem:
        entries = torch.cat([torch.ones(60), torch.full((20,), small), torch.zeros(20)])
        ones = torch.ones(100, dtype=torch.float64)
        return Problem(torch.diag(entries.double()), torch.diag(ones), ones, torch.float64, 2e-10)

    assert not _registry._has_high_rank(diagonal(1e-6))  # rank 60 of 100
    assert _registry._has_high_rank(diagonal(1e-3))  # rank 80 of 100


@pytest.mark.parametrize("m", [3, 30])
def test_auto_solver_matches_both_solvers(m: int) -> None:
    generator = torch.Generator().manual_seed(m)
    jacobian = torch.randn(m, 50, generator=generator, dtype=torch.float64)
    gramian = jacobian @ jacobian.T
    gramian = gramian / gramian.trace() + 1e-4 * torch.eye(m, dtype=torch.float64)
    bounds = torch.eye(m, dtype=torch.float64) / m
    auto = solve_dual_cone(gramian, bounds, "auto")
    for solver in ("quadprog", "torch"):
        torch.testing.assert_close(
            auto, solve_dual_cone(gramian, bounds, solver), rtol=1e-6, atol=1e-9
        )


@settings(max_examples=300, derandomize=True)
@given(
    m=st.sampled_from((1, 2)),
    rank=st.sampled_from(("full", "one")),
    scale=st.sampled_from((1.0, 1e-10, 1e10)),
    reg_eps=st.sampled_from((1e-4, 1e-8, 0.0)),
    kind=st.sampled_from(("upgrad", "dualproj", "signed")),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_closed_forms_of_one_and_two_objectives_match_quadprog(
    m: int, rank: str, scale: float, reg_eps: float, kind: str, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    inner = 1 if rank == "one" else 3
    jacobian = torch.randn(m, inner, generator=generator, dtype=torch.float64)
    jacobian = scale * jacobian @ torch.randn(inner, 5, generator=generator, dtype=torch.float64)
    gramian = jacobian @ jacobian.T + reg_eps * scale**2 * torch.eye(m, dtype=torch.float64)
    pref = torch.rand(m, generator=generator, dtype=torch.float64) + 0.1
    bounds = {
        "upgrad": torch.diag(pref / pref.sum()),
        "dualproj": (pref / pref.sum()).unsqueeze(0),
        "signed": torch.randn(3, m, generator=generator, dtype=torch.float64),
    }[kind]

    auto = solve_dual_cone(gramian, bounds, "auto")
    expected = solve_dual_cone(gramian, bounds, "quadprog")

    assert auto.shape == bounds.shape and auto.dtype == gramian.dtype
    if solve_closed_form(gramian, bounds) is None:
        # A singular G (no regularisation, rank one): quadprog and its jitter decide.
        assert torch.equal(auto, expected)
        return
    # Optimality (KKT): v ≥ u, G v ≥ 0, and (G v)_i = 0 wherever v_i > u_i.
    products = auto @ gramian
    tolerance = 1e-10 * gramian.abs().max() * torch.maximum(auto.abs(), bounds.abs()).max()
    assert (auto >= bounds).all()
    assert (products >= -tolerance).all()
    assert (products[auto > bounds].abs() <= tolerance).all()
    # Never worse than quadprog's objective, which loses digits when G is nearly singular...
    objective = (products * auto).sum(1)
    expected_objective = ((expected @ gramian) * expected).sum(1)
    slack = 1e-12 * gramian.abs().max() * bounds.abs().max() ** 2
    assert (objective <= expected_objective + slack).all()
    # ... and equal to its solution where G is well conditioned.
    if reg_eps >= 1e-4:
        error_scale = torch.maximum(expected.abs().amax(), bounds.abs().amax())
        assert (auto - expected).abs().max() <= 1e-6 * error_scale


@pytest.mark.parametrize(("m", "n"), [(12, 5), (30, 10), (60, 20)])
def test_quadprog_solves_a_singular_gramian_exactly_in_its_range(m: int, n: int) -> None:
    generator = torch.Generator().manual_seed(m)
    jacobian = torch.randn(m, n, generator=generator, dtype=torch.float64)
    gramian = jacobian @ jacobian.T
    lower_bounds = torch.eye(m, dtype=torch.float64) / m

    solutions = solve_dual_cone(gramian, lower_bounds, "quadprog")

    # No jitter: the optimality conditions of G itself hold to rounding, far below the bound
    # 2 · 2.2e-10 that the smallest jitter would leave.
    assert (solutions >= lower_bounds).all()
    norms = gramian.diagonal().sqrt()
    scale = norms * (solutions * norms).sum(dim=1, keepdim=True)
    assert (solutions @ gramian >= -1e-12 * scale).all()
