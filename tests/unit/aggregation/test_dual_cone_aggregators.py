"""What UPGrad and DualProj (and their weightings) share, tested once for both.

Each test runs on the two aggregators, with their own reference values on the two-row reference
Jacobian. The tests of what only one of them does are in ``test_upgrad.py`` and
``test_dualproj.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from _matrices import REFERENCE_JACOBIAN, random_jacobians, seeds
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from jdoptim.aggregation import (
    DualProj,
    DualProjWeighting,
    NonDifferentiableError,
    UPGrad,
    UPGradWeighting,
    _dualproj,
    _upgrad,
)
from jdoptim.aggregation._dual_cone import DualConeSolverError, _registry
from jdoptim.aggregation._dual_cone_weighting import DualConeAggregator, DualConeWeighting


@dataclass(frozen=True)
class Case:
    """An aggregator, its weighting, and their reference values on ``REFERENCE_JACOBIAN``."""

    aggregator: type[DualConeAggregator]
    weighting: type[DualConeWeighting]
    output: tuple[float, ...]
    weights: tuple[float, ...]

    @property
    def name(self) -> str:
        return self.aggregator.__name__


UPGRAD = Case(UPGrad, UPGradWeighting, (0.2929, 1.9004, 1.9004), (1.1109, 0.7894))
DUALPROJ = Case(DualProj, DualProjWeighting, (0.5563, 1.1109, 1.1109), (0.6109, 0.5000))
CASES = pytest.mark.parametrize("case", [UPGRAD, DUALPROJ], ids=lambda case: case.name)


@CASES
def test_reference_value(case: Case) -> None:
    output = case.aggregator()(REFERENCE_JACOBIAN)

    torch.testing.assert_close(output, torch.tensor(case.output), atol=1e-4, rtol=0)


@CASES
def test_reference_weights(case: Case) -> None:
    weights = case.weighting()(REFERENCE_JACOBIAN @ REFERENCE_JACOBIAN.T)

    torch.testing.assert_close(weights, torch.tensor(case.weights), atol=1e-4, rtol=0)


@CASES
def test_non_conflicting_rows_give_their_mean(case: Case) -> None:
    # Pairwise non-negative inner products: every row already lies in the dual cone.
    jacobian = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0]])

    torch.testing.assert_close(case.aggregator()(jacobian), jacobian.mean(dim=0))


@CASES
def test_orthogonal_rows_give_their_mean(case: Case) -> None:
    jacobian = torch.diag(torch.tensor([1.0, -2.0, 5.0]))

    torch.testing.assert_close(case.aggregator()(jacobian), torch.tensor([1 / 3, -2 / 3, 5 / 3]))


@CASES
def test_pref_vector_weights_non_conflicting_rows(case: Case) -> None:
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]])

    output = case.aggregator(pref_vector=torch.tensor([0.25, 0.75]))(jacobian)

    torch.testing.assert_close(output, torch.tensor([0.25, 1.5]))


@CASES
def test_opposite_rows_give_almost_zero(case: Case) -> None:
    # In one dimension, the dual cone of {2, -1} is {0}: only the regularisation remains.
    output = case.aggregator()(torch.tensor([[2.0], [-1.0]]))

    assert output.abs().item() < 1e-3


@CASES
def test_single_row_is_returned(case: Case) -> None:
    row = torch.tensor([[3.0, -1.0, 2.0]])

    torch.testing.assert_close(case.aggregator()(row), row[0])


@CASES
def test_single_parameter(case: Case) -> None:
    output = case.aggregator()(torch.tensor([[2.0], [3.0]]))

    torch.testing.assert_close(output, torch.tensor([2.5]))


@CASES
def test_zero_matrix_gives_zeros(case: Case) -> None:
    assert torch.equal(case.aggregator()(torch.zeros(3, 4)), torch.zeros(4))


@CASES
@pytest.mark.parametrize("solver", ["torch", "quadprog"])
def test_zero_matrix_gives_zeros_with_a_zero_norm_eps(case: Case, solver: str) -> None:
    # tr(G) = 0 >= norm_eps = 0: the normalised Gramian is the zero matrix, never 0 / 0.
    output = case.aggregator(norm_eps=0.0, solver=solver)(torch.zeros(3, 4))

    assert torch.equal(output, torch.zeros(4))


@CASES
@pytest.mark.parametrize("solver", ["torch", "quadprog"])
@pytest.mark.parametrize(
    ("jacobian", "expected"),
    [
        ([[1.0, 2.0], [2.0, 4.0]], [1.5, 3.0]),  # parallel rows: the mean
        ([[1.0, 0.0], [0.0, 0.0]], [0.5, 0.0]),  # a zero row
        ([[1.0, 0.0], [-1.0, 0.0]], [0.0, 0.0]),  # opposite rows: the dual cone is a plane
        ([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0]),
    ],
)
def test_exactly_singular_gramians_with_a_zero_reg_eps(
    case: Case, solver: str, jacobian: list[list[float]], expected: list[float]
) -> None:
    # reg_eps = 0 is allowed: the QP is then posed on a singular Gramian.
    output = case.aggregator(reg_eps=0.0, solver=solver)(
        torch.tensor(jacobian, dtype=torch.float64)
    )

    torch.testing.assert_close(
        output, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0
    )


@CASES
@pytest.mark.parametrize("pref_vector", [None, torch.tensor([0.5, 0.2, 0.3])])
def test_zero_gramian_gives_the_pref_vector(case: Case, pref_vector: Tensor | None) -> None:
    weights = case.weighting(pref_vector)(torch.zeros(3, 3))

    expected = torch.full((3,), 1 / 3) if pref_vector is None else pref_vector
    torch.testing.assert_close(weights, expected)


@CASES
def test_tiny_jacobian_falls_back_to_the_mean(case: Case) -> None:
    # tr(J Jᵀ) < norm_eps: the normalised Gramian is zero, so the weights are 1/m.
    jacobian = 1e-4 * REFERENCE_JACOBIAN

    torch.testing.assert_close(case.aggregator()(jacobian), jacobian.mean(dim=0))


@CASES
@pytest.mark.parametrize("matrix_index", range(16))
def test_output_conflicts_with_no_row_up_to_the_regularisation(
    case: Case, matrix_index: int
) -> None:
    jacobian = random_jacobians()[matrix_index]
    gramian = jacobian @ jacobian.T
    weights = case.weighting()(gramian)

    products = gramian @ weights  # J · A(J)

    # Ĝw ≥ 0 with Ĝ = G/tr(G) + reg_eps·I implies (Gw)_i ≥ -reg_eps·tr(G)·w_i, with equality
    # where the projection is tight: the rounding of Gw (relative to tr(G)·‖w‖₁) is allowed.
    rounding = 1e-12 * gramian.trace() * weights.abs().sum()
    tolerance = 1e-4 * gramian.trace() * weights.abs().max() + rounding + 1e-12
    assert (products >= -tolerance).all()


@CASES
@pytest.mark.parametrize("matrix_index", range(16))
def test_weights_are_at_least_the_pref_vector(case: Case, matrix_index: int) -> None:
    jacobian = random_jacobians()[matrix_index]

    weights = case.weighting()(jacobian @ jacobian.T)

    assert (weights >= 1 / jacobian.shape[0] - 1e-12).all()


def _more_rows_than_columns() -> Tensor:
    """A fixed ``[250, 161]`` Gaussian Jacobian: more objectives than parameters."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(250, 161, generator=generator, dtype=torch.float64)


def _rounding_scale(jacobian: Tensor, weights: Tensor) -> Tensor:
    """``‖gᵢ‖ Σⱼ ‖gⱼ‖ |wⱼ|``: a bound on every term of ``(J Jᵀ w)ᵢ``, the scale of its rounding."""
    row_norms = jacobian.norm(dim=1)
    return row_norms * (row_norms * weights.abs()).sum()


@CASES
def test_default_tolerance_holds_row_by_row_and_is_reached_when_m_exceeds_n(case: Case) -> None:
    jacobian = _more_rows_than_columns()
    gramian = jacobian @ jacobian.T
    weights = case.weighting()(gramian)

    products = jacobian @ (jacobian.T @ weights)  # J · A(J)

    # Every QP's optimality condition Ĝv ≥ 0, summed: (J·A(J))_i ≥ -reg_eps · tr(G) · w_i.
    bound = 1e-4 * gramian.trace() * weights + 1e-12 * _rounding_scale(jacobian, weights)
    assert (products >= -bound).all()
    # With more objectives than parameters the rows conflict so much that the bound is reached:
    # some losses increase to first order, as the documentation says.
    assert (products < 0).any()


@CASES
@pytest.mark.parametrize("solver", ["auto", "torch"])
def test_zero_reg_eps_does_not_conflict_when_m_exceeds_n(case: Case, solver: str) -> None:
    jacobian = _more_rows_than_columns()
    weights = case.weighting(reg_eps=0.0, solver=solver)(jacobian @ jacobian.T)

    products = jacobian @ case.aggregator(reg_eps=0.0, solver=solver)(jacobian)

    # The documented constant: twice the float64 jitter, plus the solvers' rounding tolerance.
    assert (products >= -4.5e-10 * _rounding_scale(jacobian, weights)).all()
    assert (weights >= 1 / 250 - 1e-9).all()


@st.composite
def _rank_deficient_with_more_rows_than_columns(draw: st.DrawFn) -> Tensor:
    """``[m, r] @ [r, n]`` with ``n < m`` and ``r ≤ n``, float64: a singular Gramian."""
    m = draw(st.integers(min_value=2, max_value=40))
    n = draw(st.integers(min_value=1, max_value=m - 1))
    rank = draw(st.integers(min_value=1, max_value=n))
    generator = torch.Generator().manual_seed(draw(seeds))
    left = torch.randn(m, rank, generator=generator, dtype=torch.float64)
    return left @ torch.randn(rank, n, generator=generator, dtype=torch.float64)


@CASES
@pytest.mark.parametrize("solver", ["auto", "torch", "quadprog"])
@settings(max_examples=25)
@given(jacobian=_rank_deficient_with_more_rows_than_columns())
def test_zero_reg_eps_never_conflicts_on_rank_deficient_matrices(
    case: Case, solver: str, jacobian: Tensor
) -> None:
    weights = case.weighting(reg_eps=0.0, solver=solver)(jacobian @ jacobian.T)

    output = case.aggregator(reg_eps=0.0, solver=solver)(jacobian)

    # Every loss is non-increasing to first order, up to a tiny relative tolerance.
    assert output.isfinite().all()
    assert (jacobian @ output >= -1e-6 * _rounding_scale(jacobian, weights)).all()
    assert (weights >= 1 / jacobian.shape[0] - 1e-9).all()


@CASES
def test_zero_reg_eps_on_a_float32_gramian_is_non_conflicting_to_float32_precision(
    case: Case,
) -> None:
    # The float32 Gramian of a [250, 161] Jacobian: its 89 zero eigenvalues are float32 noise.
    jacobian = _more_rows_than_columns()
    weights = case.weighting(reg_eps=0.0)(jacobian.float() @ jacobian.float().T).double()

    products = jacobian @ (jacobian.T @ weights)

    # The jitter follows float32's precision: about m · ε₃₂ relative, never NaN nor a failure.
    assert weights.isfinite().all()
    tolerance = 250 * torch.finfo(torch.float32).eps * _rounding_scale(jacobian, weights)
    assert (products >= -tolerance).all()


@CASES
def test_badly_scaled_rows_give_a_finite_non_conflicting_output(case: Case) -> None:
    scales = torch.logspace(-10, 15, 6, dtype=torch.float64)
    jacobian = torch.randn(6, 8, dtype=torch.float64) * scales[:, None]

    output = case.aggregator()(jacobian)
    weights = case.weighting()(jacobian @ jacobian.T)

    assert output.isfinite().all()
    products = jacobian @ output
    tolerance = 1e-4 * (jacobian @ jacobian.T).trace() * weights.max()
    assert (products >= -tolerance).all()


@CASES
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_has_the_input_dtype(case: Case, dtype: torch.dtype) -> None:
    output = case.aggregator()(REFERENCE_JACOBIAN.to(dtype))

    assert output.dtype == dtype
    expected = torch.tensor(case.output, dtype=dtype)
    torch.testing.assert_close(output, expected, atol=2e-2, rtol=1e-2)


@CASES
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_input_gives_a_non_finite_output(case: Case, bad_value: float) -> None:
    jacobian = REFERENCE_JACOBIAN.clone()
    jacobian[0, 0] = bad_value

    assert not case.aggregator()(jacobian).isfinite().all()


@CASES
def test_backward_through_the_output_raises(case: Case) -> None:
    jacobian = REFERENCE_JACOBIAN.clone().requires_grad_()

    with pytest.raises(NonDifferentiableError, match=case.name):
        case.aggregator()(jacobian).sum().backward()


@CASES
def test_weighting_hooks_fire(case: Case) -> None:
    aggregator = case.aggregator()
    seen: list[Tensor] = []
    aggregator.gramian_weighting.register_forward_hook(lambda module, args, out: seen.append(out))

    aggregator(REFERENCE_JACOBIAN)

    assert len(seen) == 1
    torch.testing.assert_close(seen[0], torch.tensor(case.weights), atol=1e-4, rtol=0)


@CASES
def test_pref_vector_follows_the_module_dtype_and_is_not_saved(case: Case) -> None:
    aggregator = case.aggregator(pref_vector=torch.tensor([0.3, 0.7])).to(torch.float64)

    assert aggregator.gramian_weighting.pref_vector.dtype == torch.float64
    assert aggregator.state_dict() == {}


@CASES
def test_repr_and_str(case: Case) -> None:
    name, weighting_name = case.name, case.weighting.__name__
    assert repr(case.aggregator()) == (
        f"{name}(pref_vector=None, norm_eps=0.0001, reg_eps=0.0001, solver='auto')"
    )
    assert repr(case.weighting(torch.tensor([0.3, 0.7]), 0.0, 0.01)) == (
        f"{weighting_name}(pref_vector=[0.3,0.7], norm_eps=0.0, reg_eps=0.01, solver='auto')"
    )
    assert str(case.aggregator()) == name
    assert str(case.aggregator(pref_vector=torch.tensor([0.3, 0.7]))) == f"{name}([0.3,0.7])"
    assert str(case.weighting()) == weighting_name


@CASES
def test_pref_vector_of_the_wrong_length_is_rejected_at_call_time(case: Case) -> None:
    aggregator = case.aggregator(pref_vector=torch.tensor([1.0, 2.0, 3.0]))

    with pytest.raises(ValueError, match=r"pref_vector.*\[3\].*\[2, 2\]"):
        aggregator(REFERENCE_JACOBIAN)


@CASES
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"norm_eps": -1e-4}, ValueError, "norm_eps"),
        ({"reg_eps": -1.0}, ValueError, "reg_eps"),
        ({"reg_eps": float("nan")}, ValueError, "reg_eps"),
        ({"norm_eps": "small"}, TypeError, "norm_eps"),
        ({"pref_vector": [0.5, 0.5]}, TypeError, "pref_vector"),
        ({"pref_vector": torch.ones(2, 2)}, ValueError, "pref_vector"),
        ({"solver": "cvxpy"}, ValueError, "solver"),
    ],
)
@pytest.mark.parametrize("which", ["aggregator", "weighting"])
def test_invalid_arguments_are_rejected(
    case: Case, which: str, kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    cls = case.aggregator if which == "aggregator" else case.weighting
    with pytest.raises(error, match=name):
        cls(**kwargs)


@CASES
@pytest.mark.parametrize("solver", ["auto", "torch", "quadprog"])
def test_weights_of_agreeing_gradients_need_no_solver(
    monkeypatch: pytest.MonkeyPatch, case: Case, solver: str
) -> None:
    # Pairwise agreeing gradients (G ≥ 0): the bounds satisfy the optimality condition, so the
    # weights are the preference vector exactly, for any m, without a QP.
    jacobian = torch.rand(40, 8, generator=torch.Generator().manual_seed(0))
    pref_vector = torch.rand(40, generator=torch.Generator().manual_seed(1))
    monkeypatch.setitem(_registry._SOLVERS, solver, _no_solver)

    weights = case.weighting(pref_vector, solver=solver)(jacobian @ jacobian.T)

    assert torch.equal(weights, pref_vector)


def _no_solver(gramian: Tensor, lower_bounds: Tensor) -> Tensor:
    raise AssertionError("no solver should be needed")


@CASES
@pytest.mark.parametrize("solver", ["torch", "quadprog"])
def test_weights_with_some_agreeing_gradients_equal_those_of_the_full_solve(
    monkeypatch: pytest.MonkeyPatch, case: Case, solver: str
) -> None:
    # Gradients 0 and 1 conflict, 2 and 3 agree with every other; a zero and a negative
    # preference entry: only the problems that need it go to the solver.
    jacobian = torch.tensor(
        [[1.0, 0.0, 0.2], [-0.6, 1.0, 0.1], [0.5, 0.9, 0.3], [0.2, 0.4, 1.0]],
        dtype=torch.float64,
    )
    gramian = jacobian @ jacobian.T
    for pref_vector in (None, torch.tensor([0.4, 0.0, -0.2, 0.5], dtype=torch.float64)):
        weighting = case.weighting(pref_vector, solver=solver)
        weights = weighting(gramian)
        # The same problems, every one of them solved.
        monkeypatch.setattr(_upgrad, "solve_dual_cone", _without_shortcut(_upgrad.solve_dual_cone))
        monkeypatch.setattr(
            _dualproj, "solve_dual_cone", _without_shortcut(_dualproj.solve_dual_cone)
        )
        expected = weighting(gramian)
        monkeypatch.undo()
        torch.testing.assert_close(weights, expected, rtol=0.0, atol=1e-12)


def _without_shortcut(solve: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def solve_all(gramian: Tensor, bounds: Tensor, solver: str, **_: object) -> Tensor:
        return solve(gramian, bounds, solver)

    return solve_all


@CASES
def test_agreeing_matrix_that_is_not_a_gramian_still_raises(case: Case) -> None:
    # Non-negative but far from positive semi-definite: refused as every solver refuses it.
    matrix = torch.tensor([[1.0, 50.0], [50.0, 1.0]])

    with pytest.raises(DualConeSolverError):
        case.weighting(solver="torch")(matrix)


@CASES
def test_agreeing_gramian_with_a_nan_gives_nan_weights(case: Case) -> None:
    gramian = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, float("nan")], [0.0, float("nan"), 1.0]])

    assert torch.isnan(case.weighting()(gramian)).all()


@CASES
def test_bounds_check_agrees_between_numpy_and_torch(case: Case) -> None:
    # float32 on the CPU takes numpy; bfloat16 (which numpy lacks) takes torch's operations, as
    # on accelerators. Rows 0 and 1 conflict; p has a zero and a negative entry.
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 2.0], [1.0, 1.0], [0.5, 0.5]])
    gramian = jacobian @ jacobian.T
    weighting = case.weighting()
    for pref_vector in (torch.full((4,), 0.25), torch.tensor([0.5, 0.0, -0.25, 0.25])):
        on_numpy = weighting.solved_at_bounds(gramian, pref_vector, each=case is UPGRAD)
        on_torch = weighting.solved_at_bounds(
            gramian.bfloat16(), pref_vector.bfloat16(), each=case is UPGRAD
        )
        assert torch.equal(on_numpy, on_torch)
    expected = [False, True, False, True] if case is UPGRAD else [False]  # the second p
    assert on_numpy.tolist() == expected
