"""The torch dual-cone solver: exact against quadprog, batched, device-native, never stuck.

The hypothesis test runs 100 random Gramians by default; set ``JDOPTIM_DUAL_CONE_EXAMPLES``
(e.g. to 5000, in two shards run with ``--hypothesis-seed=1`` and ``--hypothesis-seed=2``) for
the thorough validation of the solver.
"""

from __future__ import annotations

import os
import threading
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from jdoptim.aggregation import DualProjWeighting, UPGradWeighting
from jdoptim.aggregation._checks import normalize
from jdoptim.aggregation._dual_cone import (
    _jitter,
    _torch,
    _torch_blocks,
    solve_dual_cone,
    solve_dual_cone_torch,
    solve_dual_cone_torch_with_info,
)

EXAMPLES = int(os.environ.get("JDOPTIM_DUAL_CONE_EXAMPLES", "100"))
# A thorough run may be split into shards with different ``--hypothesis-seed`` values.
THOROUGH = "JDOPTIM_DUAL_CONE_EXAMPLES" in os.environ
RELATIVE_TOLERANCE = 1e-6
# Hypothesis shrinks towards the first entry of each tuple.
SCALES = (1.0, 1e-10, 1e-5, 1e5, 1e10)
# Below 1e-6 the condition number of G passes 1e8 and quadprog's dual path loses the digits
# needed for a 1e-6 comparison; smaller regularisations are checked through the KKT conditions.
REGULARISATIONS = (1e-4, 1e-6)
BOUND_KINDS = ("upgrad", "dualproj", "signed")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _regularized_gramian(jacobian: Tensor, reg_eps: float) -> Tensor:
    """The Gramian UPGrad and DualProj hand to the solver: trace-normalised plus reg_eps · I."""
    identity = torch.eye(jacobian.shape[0], dtype=jacobian.dtype)
    return normalize(jacobian @ jacobian.T, 1e-4) + reg_eps * identity


def _lower_bounds(kind: str, m: int, generator: torch.Generator) -> Tensor:
    pref = torch.rand(m, generator=generator, dtype=torch.float64) + 0.1
    if kind == "upgrad":
        return torch.diag(pref / pref.sum())
    if kind == "dualproj":
        return (pref / pref.sum()).unsqueeze(0)
    return torch.randn(4, m, generator=generator, dtype=torch.float64)


def _assert_relatively_close(actual: Tensor, expected: Tensor, lower_bounds: Tensor) -> None:
    # Relative to the size of the problem: a solution v = 0 (all bounds negative) is compared
    # on the scale of its bounds, not on that of quadprog's rounding noise around zero.
    scale = torch.maximum(expected.abs().amax(dim=1), lower_bounds.abs().amax(dim=1))
    scale = scale.unsqueeze(1).clamp(min=1e-300)
    error = ((actual - expected).abs() / scale).max().item()
    assert error <= RELATIVE_TOLERANCE, f"relative error {error:.3e}"


@settings(max_examples=EXAMPLES, derandomize=not THOROUGH)
@given(
    m=st.integers(min_value=1, max_value=128),
    rank_fraction=st.sampled_from((1.0, 0.5, 0.1, 0.0)),
    scale=st.sampled_from(SCALES),
    row_scale_spread=st.sampled_from((0.0, 3.0, 10.0)),
    reg_eps=st.sampled_from(REGULARISATIONS),
    kind=st.sampled_from(BOUND_KINDS),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_matches_quadprog_on_random_gramians(
    m: int,
    rank_fraction: float,
    scale: float,
    row_scale_spread: float,
    reg_eps: float,
    kind: str,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    rank = max(1, round(rank_fraction * m))
    n = rank if rank < m else 2 * m
    jacobian = torch.randn(m, rank, generator=generator, dtype=torch.float64)
    jacobian = jacobian @ torch.randn(rank, n, generator=generator, dtype=torch.float64)
    exponents = torch.rand(m, 1, generator=generator, dtype=torch.float64) * 2 - 1
    jacobian = scale * jacobian * 10.0 ** (row_scale_spread * exponents)
    gramian = _regularized_gramian(jacobian, reg_eps)
    lower_bounds = _lower_bounds(kind, m, generator)
    if kind == "upgrad" and m > 16:
        # quadprog's cost grows like m⁴ over all m rows: check a random subset of them.
        rows = torch.randperm(m, generator=generator)[:16]
        lower_bounds = lower_bounds[rows]

    result = solve_dual_cone_torch_with_info(gramian, lower_bounds)
    expected = solve_dual_cone(gramian, lower_bounds, "quadprog")

    assert result.converged
    _assert_relatively_close(result.solution, expected, lower_bounds)


def _structured_jacobian(m: int, structure: str, generator: torch.Generator) -> Tensor:
    """A Jacobian whose Gramian is hard for a QP solver: rank-deficient, with a condition number
    up to 1e12, with duplicated rows or with zero rows."""
    if structure == "rank_deficient":
        rank = max(1, m // 4)
        return torch.randn(m, rank, generator=generator, dtype=torch.float64) @ torch.randn(
            rank, 2 * m, generator=generator, dtype=torch.float64
        )
    jacobian = torch.randn(m, 2 * m, generator=generator, dtype=torch.float64)
    if structure == "ill_conditioned":
        # Singular values from 1 to 1e-6: G = J Jᵀ has a condition number of 1e12.
        left, _ = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))
        right, _ = torch.linalg.qr(torch.randn(2 * m, m, generator=generator, dtype=torch.float64))
        singular_values = torch.logspace(0, -6, m, dtype=torch.float64)
        return left @ torch.diag(singular_values) @ right.T
    if structure == "duplicated_rows":
        source = torch.randint(0, max(1, m // 2), (m,), generator=generator)
        return jacobian[source]
    # zero rows
    return jacobian * (torch.rand(m, 1, generator=generator, dtype=torch.float64) > 0.3)


@settings(max_examples=EXAMPLES, derandomize=not THOROUGH)
@given(
    m=st.integers(min_value=3, max_value=96),
    structure=st.sampled_from(("rank_deficient", "ill_conditioned", "duplicated_rows", "zero")),
    reg_eps=st.sampled_from((1e-4, 0.0)),
    solver=st.sampled_from(("torch", "auto")),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_structured_gramians_satisfy_the_kkt_conditions(
    m: int, structure: str, reg_eps: float, solver: str, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    gramian = _regularized_gramian(_structured_jacobian(m, structure, generator), reg_eps)
    lower_bounds = _lower_bounds("upgrad", m, generator)

    v = solve_dual_cone(gramian, lower_bounds, solver)

    _assert_kkt(v, gramian, lower_bounds)


def _assert_kkt(v: Tensor, gramian: Tensor, lower_bounds: Tensor) -> None:
    """``v ≥ u``, ``G v ≥ 0`` and ``(G v)_j = 0`` where ``v_j > u_j``, each row ``j`` relative
    to its own scale: ``|(G v)_j| ≤ Σ_l |G_jl| |v_l|``."""
    gradient = v @ gramian
    scale = v.abs() @ gramian.abs()
    tolerance = RELATIVE_TOLERANCE * scale + 1e-300
    assert (v >= lower_bounds).all()
    assert (gradient >= -tolerance).all()
    free = v > lower_bounds * (1.0 + RELATIVE_TOLERANCE) + RELATIVE_TOLERANCE * v.abs().amax(
        dim=1, keepdim=True
    )
    assert (gradient.abs()[free] <= tolerance[free]).all()


def _assert_no_conflict(v: Tensor, gramian: Tensor) -> None:
    """Non-conflict as ``reg_eps = 0`` promises it: ``(G v)_j ≥ -1e-9 ‖v‖₁`` for every row."""
    scale = v.abs().sum(dim=1, keepdim=True)
    assert (v @ gramian >= -1e-9 * scale).all()


@pytest.mark.parametrize(("m", "n"), [(128, 64), (192, 96), (128, 1000)])
def test_rank_deficient_gramians_need_no_more_pivoting_than_full_rank_ones(m: int, n: int) -> None:
    # The guess of the free sets (over-relaxed ADMM steps, see ._guess) is good enough, also for
    # the ill-conditioned Gramians of Jacobians with m > n, that at most one pivoting step
    # corrects it after the first solve (with 32 projected-gradient steps and no restarts,
    # [128, 64] needed 7 and [192, 96] 5).
    generator = torch.Generator().manual_seed(m + n)
    jacobian = torch.randn(m, n, generator=generator, dtype=torch.float64)
    gramian = _regularized_gramian(jacobian, 1e-4)
    lower_bounds = torch.eye(m, dtype=torch.float64) / m

    result = solve_dual_cone_torch_with_info(gramian, lower_bounds)

    assert result.converged
    assert result.iterations <= 2
    rows = torch.randperm(m, generator=generator)[:16]
    expected = solve_dual_cone(gramian, lower_bounds[rows], "quadprog")
    _assert_relatively_close(result.solution[rows], expected, lower_bounds[rows])


@pytest.mark.parametrize("reg_eps", [1e-8, 1e-10, 0.0])
@pytest.mark.parametrize("seed", range(5))
def test_small_regularisations_satisfy_the_kkt_conditions(reg_eps: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(40, 10, generator=generator, dtype=torch.float64)
    gramian = _regularized_gramian(jacobian, reg_eps)
    lower_bounds = torch.eye(40, dtype=torch.float64) / 40

    result = solve_dual_cone_torch_with_info(gramian, lower_bounds)

    v = result.solution
    assert result.converged
    assert (v >= lower_bounds).all()
    gradient = v @ gramian
    scale = v.abs().sum(dim=1, keepdim=True)
    assert (gradient >= -1e-9 * scale).all()
    assert ((v - lower_bounds) * gradient).abs().max() <= 1e-9 * scale.max() ** 2


@pytest.mark.parametrize("m", [1, 5, 40])
@pytest.mark.parametrize("rank", ["full", "deficient"])
def test_masked_path_matches_the_compact_path(m: int, rank: str) -> None:
    # The masked path is what runs on accelerators; the compact one is the CPU default.
    inner = m if rank == "full" else max(1, m // 4)
    jacobian = torch.randn(m, inner, dtype=torch.float64) @ torch.randn(
        inner, 2 * m, dtype=torch.float64
    )
    gramian = _regularized_gramian(jacobian, 1e-4)
    lower_bounds = torch.eye(m, dtype=torch.float64) / m

    masked = solve_dual_cone_torch_with_info(gramian, lower_bounds, compact=False)
    compact = solve_dual_cone_torch_with_info(gramian, lower_bounds, compact=True)

    assert masked.converged and compact.converged
    _assert_relatively_close(masked.solution, compact.solution, lower_bounds)


def test_rank_one_gramian_without_regularisation_is_solved() -> None:
    # Free sets of two or more indices are singular here: the solver must jitter, not fail.
    direction = torch.tensor([[1.0], [-2.0], [-3.0], [0.5]], dtype=torch.float64)
    gramian = direction @ direction.T
    lower_bounds = torch.eye(4, dtype=torch.float64)

    solutions = solve_dual_cone(gramian, lower_bounds, "torch")

    assert solutions.isfinite().all()
    assert (solutions >= lower_bounds).all()
    assert (solutions @ gramian >= -1e-6).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_has_the_dtype_and_device_of_the_gramian(device: str, dtype: torch.dtype) -> None:
    gramian = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=dtype, device=device)

    solutions = solve_dual_cone_torch(gramian, torch.eye(2, dtype=torch.float64, device=device))

    assert solutions.dtype == dtype
    assert solutions.device == gramian.device
    torch.testing.assert_close(
        solutions, torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=dtype, device=device)
    )


def test_float32_gramian_is_solved_in_float64() -> None:
    jacobian = torch.randn(30, 10, dtype=torch.float64)
    gramian = _regularized_gramian(jacobian, 1e-4)
    lower_bounds = torch.eye(30, dtype=torch.float64) / 30

    solutions = solve_dual_cone_torch(gramian.float(), lower_bounds.float())
    expected = solve_dual_cone(gramian.float().double(), lower_bounds, "quadprog")

    # Only the final cast to float32 loses precision.
    torch.testing.assert_close(solutions, expected.float(), rtol=1e-6, atol=1e-8)


def test_cap_on_the_steps_is_reported() -> None:
    gramian = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
    lower_bounds = torch.eye(2, dtype=torch.float64)

    result = solve_dual_cone_torch_with_info(gramian, lower_bounds, max_iterations=0)

    assert not result.converged
    assert (result.solution >= lower_bounds).all()


def test_well_posed_problems_emit_no_warning() -> None:
    gramian = _regularized_gramian(torch.randn(50, 7, dtype=torch.float64), 1e-4)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve_dual_cone_torch(gramian, torch.eye(50, dtype=torch.float64))


@pytest.mark.parametrize("weighting_class", [UPGradWeighting, DualProjWeighting])
def test_weightings_agree_across_solvers(weighting_class: type) -> None:
    jacobian = torch.randn(20, 6)
    gramian = jacobian @ jacobian.T

    weights_torch = weighting_class(solver="torch")(gramian)
    weights_quadprog = weighting_class(solver="quadprog")(gramian)

    torch.testing.assert_close(weights_torch, weights_quadprog, rtol=1e-5, atol=1e-7)


def _upgrad_problem(m: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    jacobian = torch.randn(m, 2 * m, generator=generator, dtype=torch.float64)
    return _regularized_gramian(jacobian, 1e-4), torch.eye(m, dtype=torch.float64) / m


@pytest.mark.parametrize("refine", [False, True])
def test_each_problem_is_solved_through_its_cheaper_block(refine: bool) -> None:
    m = 512
    solver = _torch_blocks.CompactSolver(*_upgrad_problem(8, 0))
    solver.m, solver.refine = m, refine
    free_counts = torch.tensor([0, 200, 250, 256, 262, 300, 400, m])

    through_active = solver._cheaper_through_active(free_counts)

    # Without refinement the smaller block; with it, K_AA only when clearly the smaller one.
    if refine:
        assert through_active.tolist() == [False] * 5 + [True] * 3
    else:
        assert through_active.tolist() == [False] * 4 + [True] * 4
    solver.has_inverse = False
    assert not solver._cheaper_through_active(free_counts).any()


def test_chunked_factorisations_match_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    gramian, lower_bounds = _upgrad_problem(48, seed=3)
    one_batch = solve_dual_cone_torch(gramian, lower_bounds)

    # Room for a handful of systems per chunk: the problems are sorted by size and split.
    monkeypatch.setattr(_torch_blocks, "_CHUNK_ENTRIES", 5 * 24 * 24)
    monkeypatch.setattr(_torch_blocks, "_MIN_CHUNK_PROBLEMS", 1)
    chunked = solve_dual_cone_torch(gramian, lower_bounds)

    torch.testing.assert_close(chunked, one_batch, rtol=1e-12, atol=1e-15)
    expected = solve_dual_cone(gramian, lower_bounds, "quadprog")
    _assert_relatively_close(chunked, expected, lower_bounds)


def test_reused_workspaces_leave_no_trace_between_sizes() -> None:
    gramian, lower_bounds = _upgrad_problem(40, seed=4)
    first = solve_dual_cone_torch(gramian, lower_bounds)
    larger, larger_bounds = _upgrad_problem(90, seed=5)
    solve_dual_cone_torch(larger, larger_bounds)  # grows every workspace

    again = solve_dual_cone_torch(gramian, lower_bounds)

    assert torch.equal(again, first)


def test_inference_mode_calls_and_normal_calls_can_alternate() -> None:
    gramian, lower_bounds = _upgrad_problem(30, seed=6)
    results: list[Tensor] = []

    def alternate() -> None:
        # A new thread starts without workspaces: the first call, in inference mode, makes them.
        with torch.inference_mode():
            results.append(solve_dual_cone_torch(gramian, lower_bounds))
        results.append(solve_dual_cone_torch(gramian, lower_bounds))  # writes into them

    thread = threading.Thread(target=alternate)
    thread.start()
    thread.join(timeout=60)

    inside, outside = results
    assert torch.equal(inside, outside)
    assert not outside.is_inference()


def test_threads_solving_at_once_get_their_own_results() -> None:
    problems = [_upgrad_problem(m, seed=m) for m in (20, 33, 47, 64)]
    expected = [solve_dual_cone_torch(g, u) for g, u in problems]
    results: dict[int, list[Tensor]] = {}

    def solve_repeatedly(index: int) -> None:
        gramian, lower_bounds = problems[index]
        results[index] = [solve_dual_cone_torch(gramian, lower_bounds) for _ in range(5)]

    threads = [threading.Thread(target=solve_repeatedly, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    for index, solutions in results.items():
        assert all(torch.equal(solution, expected[index]) for solution in solutions)
    assert sorted(results) == [0, 1, 2, 3]


def _solve_both_ways(
    monkeypatch: pytest.MonkeyPatch, gramian: Tensor, lower_bounds: Tensor
) -> tuple[Tensor, Tensor, list[int]]:
    """The torch solver's answers with every block in double precision, then with every block
    factorised in single precision and refined, and the numbers of problems the latter solved
    again in double precision."""
    monkeypatch.setattr(_torch_blocks, "_MIXED_PRECISION_MIN_BLOCK", 10**9)
    double = solve_dual_cone_torch(gramian, lower_bounds)
    monkeypatch.setattr(_torch_blocks, "_MIXED_PRECISION_MIN_BLOCK", 1)
    factorised: list[torch.dtype] = []
    again: list[int] = []
    solve_blocks = _torch_blocks.CompactSolver._solve_blocks
    factorize = _torch_blocks.CompactSolver._factorize

    def recording(
        self: _torch_blocks.CompactSolver,
        lower_bounds: Tensor,
        free: Tensor,
        block: Tensor,
        through_active: Tensor,
        double_only: bool = False,
    ) -> Tensor:
        if double_only:
            again.append(lower_bounds.shape[0])
        return solve_blocks(self, lower_bounds, free, block, through_active, double_only)

    def recording_factorize(
        self: _torch_blocks.CompactSolver,
        offsets: Tensor,
        rows: Tensor,
        stacked: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        factor, success = factorize(self, offsets, rows, stacked)
        factorised.append(factor.dtype)
        return factor, success

    monkeypatch.setattr(_torch_blocks.CompactSolver, "_solve_blocks", recording)
    monkeypatch.setattr(_torch_blocks.CompactSolver, "_factorize", recording_factorize)
    mixed = solve_dual_cone_torch(gramian, lower_bounds)
    assert factorised[0] == torch.float32  # the first blocks went through single precision
    return double, mixed, again


@pytest.mark.parametrize("columns", [24, 48, 96])
def test_single_precision_blocks_refined_match_double_precision(
    monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    # Rank-deficient (24 < m), square-ish and full-rank Jacobians: both paths (G_FF and K_AA).
    generator = torch.Generator().manual_seed(columns)
    jacobian = torch.randn(48, columns, generator=generator, dtype=torch.float64)
    gramian = _regularized_gramian(jacobian, 1e-4)
    lower_bounds = torch.eye(48, dtype=torch.float64) / 48

    double, mixed, again = _solve_both_ways(monkeypatch, gramian, lower_bounds)

    # The refinement reaches the residual of a double-precision solve, with no problem left
    # to solve again: the answers agree to the accuracy of double precision.
    assert again == []
    torch.testing.assert_close(mixed, double, rtol=1e-10, atol=1e-13)
    expected = solve_dual_cone(gramian, lower_bounds, "quadprog")
    _assert_relatively_close(mixed, expected, lower_bounds)


def test_blocks_too_ill_conditioned_for_single_precision_are_solved_in_double(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Condition number 1e10: float32 can neither factorise nor refine such blocks.
    generator = torch.Generator().manual_seed(7)
    basis, _ = torch.linalg.qr(torch.randn(32, 32, generator=generator, dtype=torch.float64))
    spectrum = torch.logspace(0, -10, 32, dtype=torch.float64)
    gramian = basis @ torch.diag(spectrum) @ basis.T
    gramian = (gramian + gramian.T) / 2
    lower_bounds = torch.eye(32, dtype=torch.float64) / 32

    double, mixed, again = _solve_both_ways(monkeypatch, gramian, lower_bounds)

    # Some problems were solved again in double precision: the answers are those of the double
    # path up to its own rounding (about cond(G) ε₆₄ = 2e-6 here), and optimal.
    assert sum(again) > 0
    torch.testing.assert_close(mixed, double, rtol=1e-5, atol=1e-8)
    _assert_kkt(mixed, gramian, lower_bounds)


@settings(max_examples=max(1, EXAMPLES // 2), derandomize=not THOROUGH)
@given(
    m=st.integers(min_value=3, max_value=64),
    structure=st.sampled_from(("rank_deficient", "ill_conditioned", "duplicated_rows", "zero")),
    reg_eps=st.sampled_from((1e-4, 0.0)),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_single_precision_blocks_satisfy_the_kkt_conditions(
    m: int, structure: str, reg_eps: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    gramian = _regularized_gramian(_structured_jacobian(m, structure, generator), reg_eps)
    lower_bounds = _lower_bounds("upgrad", m, generator)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_torch_blocks, "_MIXED_PRECISION_MIN_BLOCK", 1)
        v = solve_dual_cone(gramian, lower_bounds, "torch")

    _assert_kkt(v, gramian, lower_bounds)


def test_singular_gramians_are_solved_from_a_regularised_rung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # reg_eps = 0 with more objectives than parameters: G is singular, the first rung of the
    # ladder about 2e-10. Solved there directly, the pivoting stalls and the active-set method
    # moves one index per step; solved on G + 1e-4 I first and polished down, few steps.
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(128, 64, generator=generator, dtype=torch.float64)
    gramian = _regularized_gramian(jacobian, 0.0)
    lower_bounds = torch.eye(128, dtype=torch.float64) / 128

    warm = solve_dual_cone_torch_with_info(gramian, lower_bounds)
    monkeypatch.setattr(_jitter, "WARM_START_JITTER", 0.0)  # no warm start
    cold = solve_dual_cone_torch_with_info(gramian, lower_bounds)

    assert warm.converged and cold.converged
    assert warm.iterations <= 20 < 60 <= cold.iterations  # 9 and 86 when measured
    # The same problem (G + δ₀ I) solved both ways: the same answer, and optimal.
    torch.testing.assert_close(warm.solution, cold.solution, rtol=1e-6, atol=1e-9)
    _assert_kkt(warm.solution, gramian, lower_bounds)
    _assert_no_conflict(warm.solution, gramian)


def test_a_stalled_polish_restarts_from_the_nearby_solution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # [96, 48] with reg_eps = 0: polished from G + 1e-4 I down to the first rung, the pivoting
    # stalls; the active-set method started from the 1e-4 rung's solution needs far fewer
    # steps than started from where the pivoting wandered to (28 against 80 when measured).
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(96, 48, generator=generator, dtype=torch.float64)
    gramian = _regularized_gramian(jacobian, 0.0)
    lower_bounds = torch.eye(96, dtype=torch.float64) / 96
    starts: list[Tensor] = []
    active_set = _torch._active_set

    def recording(g: Tensor, u: Tensor, start: Tensor, *args: object) -> object:
        starts.append(start)
        return active_set(g, u, start, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_torch, "_active_set", recording)
    result = solve_dual_cone_torch_with_info(gramian, lower_bounds)
    polish_stalled = len(starts) > 0
    monkeypatch.setattr(_jitter, "WARM_START_JITTER", 0.0)  # the first rung from scratch
    cold = solve_dual_cone_torch_with_info(gramian, lower_bounds)

    assert result.converged and cold.converged
    assert polish_stalled and result.iterations <= 50
    # Both optimal: with 96 directions in 48 dimensions the projections are zero, and the two
    # answers may differ along directions where the first rung's jitter (2e-10) weighs less than
    # rounding, but not in their objective, and each meets the KKT conditions.
    objectives = [(v @ gramian * v).sum(dim=1) for v in (result.solution, cold.solution)]
    largest_norm = result.solution.abs().sum(dim=1).amax()
    torch.testing.assert_close(objectives[0], objectives[1], rtol=0.0, atol=1e-14 * largest_norm**2)
    _assert_kkt(result.solution, gramian, lower_bounds)
    _assert_no_conflict(result.solution, gramian)


def test_few_singular_objectives_are_solved_on_their_own_rung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Below WARM_START_MIN_OBJECTIVES the two solves of the warm start cost more than one.
    def refuse(*args: object) -> None:
        raise AssertionError("warm start below its threshold")

    monkeypatch.setattr(_jitter, "_warm_started", refuse)
    generator = torch.Generator().manual_seed(1)
    m = _jitter.WARM_START_MIN_OBJECTIVES - 1
    jacobian = torch.randn(m, m // 2, generator=generator, dtype=torch.float64)
    gramian = _regularized_gramian(jacobian, 0.0)
    lower_bounds = torch.eye(m, dtype=torch.float64) / m

    v = solve_dual_cone(gramian, lower_bounds, "torch")

    _assert_kkt(v, gramian, lower_bounds)
