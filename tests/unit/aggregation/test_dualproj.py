"""DualProj and DualProjWeighting (SPEC §2, Appendix A)."""

from __future__ import annotations

import pytest
import torch
from _matrices import REFERENCE_JACOBIAN, random_jacobians
from torch import Tensor

from jdoptim.aggregation import DualProj, DualProjWeighting, NonDifferentiableError


def test_reference_value() -> None:
    output = DualProj()(REFERENCE_JACOBIAN)

    torch.testing.assert_close(output, torch.tensor([0.5563, 1.1109, 1.1109]), atol=1e-4, rtol=0)


def test_reference_weights() -> None:
    weights = DualProjWeighting()(REFERENCE_JACOBIAN @ REFERENCE_JACOBIAN.T)

    torch.testing.assert_close(weights, torch.tensor([0.6109, 0.5000]), atol=1e-4, rtol=0)


def test_output_conflicts_with_the_reference_rows_only_up_to_the_regularisation() -> None:
    products = REFERENCE_JACOBIAN @ DualProj()(REFERENCE_JACOBIAN)

    # -reg_eps · tr(G) · max(w) = -1e-4 · 56 · 0.6109
    assert (products >= -3.5e-3).all()
    assert (DualProj(reg_eps=0.0)(REFERENCE_JACOBIAN) @ REFERENCE_JACOBIAN.T >= -1e-5).all()


def test_non_conflicting_rows_give_their_mean() -> None:
    # Pairwise non-negative inner products: every row already lies in the dual cone.
    jacobian = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0]])

    torch.testing.assert_close(DualProj()(jacobian), jacobian.mean(dim=0))


def test_orthogonal_rows_give_their_mean() -> None:
    jacobian = torch.diag(torch.tensor([1.0, -2.0, 5.0]))

    torch.testing.assert_close(DualProj()(jacobian), torch.tensor([1 / 3, -2 / 3, 5 / 3]))


def test_pref_vector_weights_non_conflicting_rows() -> None:
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]])

    output = DualProj(pref_vector=torch.tensor([0.25, 0.75]))(jacobian)

    torch.testing.assert_close(output, torch.tensor([0.25, 1.5]))


def test_opposite_rows_give_almost_zero() -> None:
    # In one dimension, the dual cone of {2, -1} is {0}: only the regularisation remains.
    output = DualProj()(torch.tensor([[2.0], [-1.0]]))

    assert output.abs().item() < 1e-3


def test_single_row_is_returned() -> None:
    row = torch.tensor([[3.0, -1.0, 2.0]])

    torch.testing.assert_close(DualProj()(row), row[0])


def test_single_parameter() -> None:
    output = DualProj()(torch.tensor([[2.0], [3.0]]))

    torch.testing.assert_close(output, torch.tensor([2.5]))


def test_zero_matrix_gives_zeros() -> None:
    assert torch.equal(DualProj()(torch.zeros(3, 4)), torch.zeros(4))


@pytest.mark.parametrize("solver", ["torch", "quadprog"])
def test_zero_matrix_gives_zeros_with_a_zero_norm_eps(solver: str) -> None:
    # tr(G) = 0 >= norm_eps = 0: the normalised Gramian is the zero matrix, never 0 / 0.
    output = DualProj(norm_eps=0.0, solver=solver)(torch.zeros(3, 4))

    assert torch.equal(output, torch.zeros(4))


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
    solver: str, jacobian: list[list[float]], expected: list[float]
) -> None:
    # reg_eps = 0 is allowed: the QP is then posed on a singular Gramian.
    output = DualProj(reg_eps=0.0, solver=solver)(torch.tensor(jacobian, dtype=torch.float64))

    torch.testing.assert_close(
        output, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("pref_vector", [None, torch.tensor([0.5, 0.2, 0.3])])
def test_zero_gramian_gives_the_pref_vector(pref_vector: Tensor | None) -> None:
    weights = DualProjWeighting(pref_vector)(torch.zeros(3, 3))

    expected = torch.full((3,), 1 / 3) if pref_vector is None else pref_vector
    torch.testing.assert_close(weights, expected)


def test_tiny_jacobian_falls_back_to_the_mean() -> None:
    # tr(J Jᵀ) < norm_eps: the normalised Gramian is zero, so the weights are 1/m.
    jacobian = 1e-4 * REFERENCE_JACOBIAN

    torch.testing.assert_close(DualProj()(jacobian), jacobian.mean(dim=0))


@pytest.mark.parametrize("matrix_index", range(16))
def test_output_conflicts_with_no_row_up_to_the_regularisation(matrix_index: int) -> None:
    jacobian = random_jacobians()[matrix_index]
    gramian = jacobian @ jacobian.T
    weights = DualProjWeighting()(gramian)

    products = gramian @ weights  # J · A(J)

    # Ĝw ≥ 0 with Ĝ = G/tr(G) + reg_eps·I implies (Gw)_i ≥ -reg_eps·tr(G)·w_i.
    tolerance = 1e-4 * gramian.trace() * weights.abs().max() + 1e-12
    assert (products >= -tolerance).all()


@pytest.mark.parametrize("matrix_index", range(16))
def test_weights_are_at_least_the_pref_vector(matrix_index: int) -> None:
    jacobian = random_jacobians()[matrix_index]

    weights = DualProjWeighting()(jacobian @ jacobian.T)

    assert (weights >= 1 / jacobian.shape[0] - 1e-12).all()


def test_projection_of_the_mean_by_hand() -> None:
    # G = [[18, -22], [-22, 38]], p = (1/2, 1/2): Gp = (-2, 8), so only w_1 moves, until
    # (Gw)_1 = 0: w = (11/18, 1/2), up to the regularisation.
    weights = DualProjWeighting(reg_eps=0.0)(REFERENCE_JACOBIAN @ REFERENCE_JACOBIAN.T)

    torch.testing.assert_close(weights, torch.tensor([11 / 18, 0.5]))


def test_badly_scaled_rows_give_a_finite_non_conflicting_output() -> None:
    scales = torch.logspace(-10, 15, 6, dtype=torch.float64)
    jacobian = torch.randn(6, 8, dtype=torch.float64) * scales[:, None]

    output = DualProj()(jacobian)
    weights = DualProjWeighting()(jacobian @ jacobian.T)

    assert output.isfinite().all()
    products = jacobian @ output
    tolerance = 1e-4 * (jacobian @ jacobian.T).trace() * weights.max()
    assert (products >= -tolerance).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_has_the_input_dtype(dtype: torch.dtype) -> None:
    output = DualProj()(REFERENCE_JACOBIAN.to(dtype))

    assert output.dtype == dtype
    expected = torch.tensor([0.5563, 1.1109, 1.1109], dtype=dtype)
    torch.testing.assert_close(output, expected, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_input_gives_a_non_finite_output(bad_value: float) -> None:
    jacobian = REFERENCE_JACOBIAN.clone()
    jacobian[0, 0] = bad_value

    assert not DualProj()(jacobian).isfinite().all()


def test_backward_through_the_output_raises() -> None:
    jacobian = REFERENCE_JACOBIAN.clone().requires_grad_()

    with pytest.raises(NonDifferentiableError, match="DualProj"):
        DualProj()(jacobian).sum().backward()


def test_weighting_hooks_fire() -> None:
    aggregator = DualProj()
    seen: list[Tensor] = []
    aggregator.gramian_weighting.register_forward_hook(lambda module, args, out: seen.append(out))

    aggregator(REFERENCE_JACOBIAN)

    assert len(seen) == 1
    torch.testing.assert_close(seen[0], torch.tensor([0.6109, 0.5000]), atol=1e-4, rtol=0)


def test_pref_vector_follows_the_module_dtype_and_is_not_saved() -> None:
    aggregator = DualProj(pref_vector=torch.tensor([0.3, 0.7])).to(torch.float64)

    assert aggregator.gramian_weighting.pref_vector.dtype == torch.float64
    assert aggregator.state_dict() == {}


def test_repr_and_str() -> None:
    assert repr(DualProj()) == (
        "DualProj(pref_vector=None, norm_eps=0.0001, reg_eps=0.0001, solver='auto')"
    )
    assert repr(DualProjWeighting(torch.tensor([0.3, 0.7]), 0.0, 0.01)) == (
        "DualProjWeighting(pref_vector=[0.3,0.7], norm_eps=0.0, reg_eps=0.01, solver='auto')"
    )
    assert str(DualProj()) == "DualProj"
    assert str(DualProj(pref_vector=torch.tensor([0.3, 0.7]))) == "DualProj([0.3,0.7])"
    assert str(DualProjWeighting()) == "DualProjWeighting"


def test_pref_vector_of_the_wrong_length_is_rejected_at_call_time() -> None:
    aggregator = DualProj(pref_vector=torch.tensor([1.0, 2.0, 3.0]))

    with pytest.raises(ValueError, match=r"pref_vector.*\[3\].*\[2, 2\]"):
        aggregator(REFERENCE_JACOBIAN)


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
@pytest.mark.parametrize("cls", [DualProj, DualProjWeighting])
def test_invalid_arguments_are_rejected(
    cls: type, kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        cls(**kwargs)
