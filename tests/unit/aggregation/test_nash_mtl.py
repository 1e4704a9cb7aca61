"""NashMTL: Nash bargaining weights, stateful between calls (needs cvxpy and ecos)."""

from __future__ import annotations

import copy
import io
import sys
import warnings

import cvxpy
import pytest
import torch
from torch import Tensor

from jdoptim.aggregation import NashMTL, NonDifferentiableError


def _bargaining_residual(matrix: Tensor, weights: Tensor) -> Tensor:
    """αᵢ(Kα)ᵢ - 1 with K = G/‖G‖_F: zero at the Nash bargaining solution."""
    gramian = (matrix @ matrix.T).double()
    scaled = gramian / gramian.norm()
    return weights * (scaled @ weights) - 1.0


def _matrices(count: int, m: int = 3, n: int = 5) -> list[Tensor]:
    # A shared direction keeps the bargaining problems feasible (some d has gᵢ·d > 0 for all i).
    shared = torch.randn(n, dtype=torch.float64)
    return [torch.randn(m, n, dtype=torch.float64) + 2.0 * shared for _ in range(count)]


def test_orthogonal_rows_by_hand() -> None:
    # G = diag(1, 4), ‖G‖_F = √17: αᵢ²Gᵢᵢ/√17 = 1 gives α = 17^¼ (1, 1/2) and Jᵀα = 17^¼ (1, 1).
    aggregator = NashMTL(n_tasks=2, max_norm=0.0)

    output = aggregator(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))

    root = 17.0**0.25
    torch.testing.assert_close(output, torch.tensor([root, root]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        aggregator.weights, torch.tensor([root, root / 2], dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_weights_solve_the_bargaining_condition() -> None:
    matrix = _matrices(1, m=4, n=6)[0]
    aggregator = NashMTL(n_tasks=4, max_norm=0.0)

    output = aggregator(matrix)

    residual = _bargaining_residual(matrix, aggregator.weights)
    torch.testing.assert_close(residual, torch.zeros_like(residual), atol=5e-3, rtol=0)
    assert (aggregator.weights > 0).all()
    assert (matrix @ output > 0).all()
    torch.testing.assert_close(output, aggregator.weights @ matrix)


def test_output_maximises_the_product_of_improvements_on_its_sphere() -> None:
    matrix = _matrices(1, m=3, n=4)[0]
    output = NashMTL(n_tasks=3, max_norm=0.0)(matrix)

    candidates = output + 0.3 * output.norm() * torch.randn(2000, 4, dtype=torch.float64)
    candidates = candidates / candidates.norm(dim=1, keepdim=True) * output.norm()
    improvements = candidates @ matrix.T
    feasible = (improvements > 0).all(dim=1)
    candidate_values = improvements[feasible].log().sum(dim=1)

    assert feasible.sum() > 100
    assert candidate_values.max() <= (matrix @ output).log().sum() + 1e-6


def test_rows_of_very_different_scales_get_equal_shares() -> None:
    # Orthogonal rows: αᵢ‖gᵢ‖ is the same for every row, whatever its scale.
    matrix = torch.diag(torch.tensor([1e-10, 1.0, 1e5, 1e15], dtype=torch.float64))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output = NashMTL(n_tasks=4, max_norm=0.0)(matrix)

    torch.testing.assert_close(output / output[0], torch.ones(4, dtype=torch.float64))


def test_max_norm_rescales_the_output() -> None:
    matrix = _matrices(1)[0] * 100.0
    unclipped = NashMTL(n_tasks=3, max_norm=0.0)(matrix)

    clipped = NashMTL(n_tasks=3, max_norm=1.5)(matrix)

    torch.testing.assert_close(clipped.norm(), torch.tensor(1.5, dtype=torch.float64))
    torch.testing.assert_close(clipped, unclipped * 1.5 / unclipped.norm())


def test_max_norm_leaves_small_outputs_unchanged() -> None:
    matrix = _matrices(1)[0] * 1e-3

    clipped = NashMTL(n_tasks=3, max_norm=1.0)(matrix)

    torch.testing.assert_close(clipped, NashMTL(n_tasks=3, max_norm=0.0)(matrix))


def test_weights_are_reused_between_updates() -> None:
    first, second, third, fourth = _matrices(4)
    aggregator = NashMTL(n_tasks=3, max_norm=0.0, update_weights_every=3)

    aggregator(first)
    weights = aggregator.weights.clone()
    output = aggregator(second)
    aggregator(third)

    assert torch.equal(aggregator.weights, weights)
    torch.testing.assert_close(output, weights @ second)
    assert int(aggregator.step) == 3
    aggregator(fourth)  # the fourth call recomputes them
    assert not torch.equal(aggregator.weights, weights)
    residual = _bargaining_residual(fourth, aggregator.weights)
    torch.testing.assert_close(residual, torch.zeros_like(residual), atol=5e-3, rtol=0)


def test_reset_forgets_the_weights_and_the_step() -> None:
    matrix = _matrices(1)[0]
    aggregator = NashMTL(n_tasks=3, update_weights_every=2)
    fresh_output = aggregator(matrix)
    aggregator(matrix)

    aggregator.reset()

    assert torch.equal(aggregator.weights, torch.ones(3, dtype=torch.float64))
    assert int(aggregator.step) == 0
    assert torch.equal(aggregator(matrix), fresh_output)


def test_state_dict_round_trip_resumes_identically() -> None:
    matrices = _matrices(6)
    original = NashMTL(n_tasks=3, update_weights_every=2, optim_niter=5)
    for matrix in matrices[:3]:
        original(matrix)

    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = NashMTL(n_tasks=3, update_weights_every=2, optim_niter=5)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))

    assert set(original.state_dict()) == {"weights", "step"}
    for matrix in matrices[3:]:
        assert torch.equal(resumed(matrix), original(matrix))
    assert torch.equal(resumed.weights, original.weights)
    assert torch.equal(resumed.step, original.step)


def test_deepcopy_gives_an_independent_aggregator() -> None:
    first, second = _matrices(2)
    aggregator = NashMTL(n_tasks=3)
    aggregator(first)

    duplicate = copy.deepcopy(aggregator)

    assert torch.equal(duplicate(second), aggregator(second))
    assert duplicate.weights is not aggregator.weights


def test_solver_failure_warns_once_with_the_reason_and_the_weights_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(self: cvxpy.Problem, *args: object, **kwargs: object) -> None:
        raise cvxpy.error.SolverError("forced failure")

    monkeypatch.setattr(cvxpy.Problem, "solve", fail)
    matrix = _matrices(1)[0]
    aggregator = NashMTL(n_tasks=3, max_norm=0.0)

    with pytest.warns(
        RuntimeWarning, match=r"forced failure.*previous weights.*\[1\.0, 1\.0, 1\.0\]"
    ):
        output = aggregator(matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aggregator(matrix)  # once per instance
    with pytest.warns(RuntimeWarning, match="forced failure"):
        NashMTL(n_tasks=3)(matrix)  # a new instance warns again

    torch.testing.assert_close(output, matrix.sum(dim=0))


def test_failure_after_some_steps_keeps_the_last_iterate(monkeypatch: pytest.MonkeyPatch) -> None:
    solve = cvxpy.Problem.solve
    calls = []

    def fail_on_second_call(self: cvxpy.Problem, *args: object, **kwargs: object) -> object:
        calls.append(None)
        if len(calls) == 2:
            raise cvxpy.error.SolverError("forced failure")
        return solve(self, *args, **kwargs)

    monkeypatch.setattr(cvxpy.Problem, "solve", fail_on_second_call)
    # The procedure needs three steps on this matrix (the others here converge in one).
    matrix = torch.tensor([[2.85, -0.1, -0.95], [0.01, -0.15, 1.25], [-0.88, -0.31, 2.08]])
    aggregator = NashMTL(n_tasks=3, max_norm=0.0)

    with pytest.warns(RuntimeWarning, match="step 2 of 20.*last iterate"):
        output = aggregator(matrix)

    assert (aggregator.weights > 0).all()
    assert not torch.equal(aggregator.weights, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(output, aggregator.weights.float() @ matrix)


def test_a_failing_warm_start_is_retried_from_ones_without_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = _matrices(2)
    expected = NashMTL(n_tasks=3)
    expected(first)
    expected_output = expected(second)
    solve = cvxpy.Problem.solve
    calls = []

    def fail_on_second_call(self: cvxpy.Problem, *args: object, **kwargs: object) -> object:
        calls.append(None)
        if len(calls) == 2:
            raise cvxpy.error.SolverError("forced failure")
        return solve(self, *args, **kwargs)

    monkeypatch.setattr(cvxpy.Problem, "solve", fail_on_second_call)
    aggregator = NashMTL(n_tasks=3)
    aggregator(first)  # one step

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output = aggregator(second)  # the warm start fails, the start from ones does not

    assert len(calls) == 3
    torch.testing.assert_close(output, expected_output, atol=1e-6, rtol=1e-6)


def test_opposite_rows_have_no_bargaining_solution_and_warn() -> None:
    matrix = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])

    with pytest.warns(RuntimeWarning, match="NashMTL"):
        output = NashMTL(n_tasks=2)(matrix)

    assert output.tolist() == [0.0, 0.0]


def test_zero_rows_take_no_part_in_the_bargaining() -> None:
    matrix = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output = NashMTL(n_tasks=3, max_norm=0.0)(matrix)

    torch.testing.assert_close(output[0], output[1])


def test_zero_matrix_gives_zeros_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert NashMTL(n_tasks=3)(torch.zeros(3, 4)).tolist() == [0.0] * 4


def test_single_row_is_rescaled_to_max_norm() -> None:
    output = NashMTL(n_tasks=1)(torch.tensor([[3.0, -4.0]]))

    torch.testing.assert_close(output, torch.tensor([0.6, -0.8]))


def test_non_finite_input_gives_nan_and_keeps_the_state() -> None:
    aggregator = NashMTL(n_tasks=2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output = aggregator(torch.tensor([[float("nan"), 1.0], [1.0, 2.0]]))

    assert output.isnan().all()
    assert int(aggregator.step) == 0
    assert torch.equal(aggregator.weights, torch.ones(2, dtype=torch.float64))


def test_dtypes_are_kept() -> None:
    matrix = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert NashMTL(n_tasks=2)(matrix.to(dtype)).dtype == dtype


def test_number_of_rows_must_equal_n_tasks() -> None:
    with pytest.raises(ValueError, match=r"`n_tasks` = 3.*\[2, 4\]"):
        NashMTL(n_tasks=3)(torch.randn(2, 4))


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"n_tasks": 0}, ValueError, "n_tasks"),
        ({"n_tasks": 2.0}, TypeError, "n_tasks"),
        ({"n_tasks": True}, TypeError, "n_tasks"),
        ({"n_tasks": 2, "max_norm": -1.0}, ValueError, "max_norm"),
        ({"n_tasks": 2, "update_weights_every": 0}, ValueError, "update_weights_every"),
        ({"n_tasks": 2, "optim_niter": 0}, ValueError, "optim_niter"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], error: type, name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        NashMTL(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("missing", ["cvxpy", "ecos"])
def test_missing_solver_raises_an_import_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)

    with pytest.raises(ImportError, match=rf'`{missing}`.*pip install "jdoptim\[nash_mtl\]"'):
        NashMTL(n_tasks=2)


def test_backward_raises_non_differentiable_error() -> None:
    matrix = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)

    with pytest.raises(NonDifferentiableError, match="NashMTL"):
        NashMTL(n_tasks=2)(matrix).sum().backward()


def test_repr_and_str() -> None:
    aggregator = NashMTL(n_tasks=3, max_norm=2.0, update_weights_every=4, optim_niter=10)

    assert repr(aggregator) == (
        "NashMTL(n_tasks=3, max_norm=2.0, update_weights_every=4, optim_niter=10)"
    )
    assert str(aggregator) == "NashMTL"


@pytest.mark.parametrize("scale", [2.0**63, 2.0**100])
def test_float32_jacobian_whose_gramian_overflows_float32_gives_a_finite_output(
    scale: float,
) -> None:
    # J Jᵀ has entries around 1e38·n or more: out of float32's range, but not of float64's.
    matrix = torch.randn(3, 5)

    output = NashMTL(n_tasks=3, max_norm=0.0)(matrix * scale)
    reference = NashMTL(n_tasks=3, max_norm=0.0)(matrix)

    assert bool(torch.isfinite(output).all())
    torch.testing.assert_close(output / scale, reference, rtol=1e-5, atol=1e-6)
