"""PCD: the constrained projection against an independent QP solver, hand-computed values,
the state, edge cases and arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quadprog
import torch
from _matrices import full_rank_matrices
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from jdoptim.aggregation import PCD, PCDWeighting


def _reference_direction(matrix: Tensor, tau: float) -> Tensor:
    """argmin ½‖d − g̃₁‖² s.t. g̃ⱼ·d ≥ τ‖g̃ⱼ‖² with g̃ᵢ = gᵢ/‖gᵢ‖ (first call, eps = 0), by an
    independent QP solver in parameter space."""
    scaled = (matrix / matrix.norm(dim=1, keepdim=True)).numpy()
    n = scaled.shape[1]
    constraints = scaled[1:].T
    bounds = tau * (scaled[1:] ** 2).sum(axis=1)
    solution = quadprog.solve_qp(np.eye(n), scaled[0], constraints, bounds, 0)[0]
    return torch.from_numpy(solution)


def test_two_rows_by_hand() -> None:
    # g̃ = (1, 0), (−1, 1)/√2; the constraint g̃₂·d ≥ ½ is active: d = g̃₁ + μ g̃₂ with
    # μ = ½ + 1/√2, then rescaled to ‖g₁‖ = 1.
    matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    mu = 0.5 + 1 / math.sqrt(2)
    direction = torch.tensor([1 - mu / math.sqrt(2), mu / math.sqrt(2)], dtype=torch.float64)
    expected = direction / direction.norm()
    torch.testing.assert_close(PCD(tau=0.5, eps=0.0)(matrix), expected)


def test_satisfied_constraints_give_the_first_gradient() -> None:
    matrix = torch.tensor([[2.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(PCD(tau=0.5)(matrix), matrix[0])


@given(full_rank_matrices(min_m=2, max_m=6, max_n=10), st.sampled_from([0.0, 0.02, 0.3, 1.0]))
def test_matches_an_independent_qp_and_satisfies_the_constraints(
    matrix: Tensor, tau: float
) -> None:
    if matrix.shape[0] - 1 > matrix.shape[1]:
        return  # More constraints than dimensions: possibly infeasible.
    output = PCD(tau=tau, eps=0.0)(matrix)
    reference = _reference_direction(matrix, tau)
    if reference.norm() < 1e-12:
        # The nearest feasible point is 0 (e.g. g₂ = −c g₁ with τ = 0): no direction to rescale.
        assert torch.equal(output, torch.zeros_like(output))
        return
    if reference.norm() < 1e-6:
        return  # Nearly 0: the direction is ill-conditioned.
    # The output is the reference direction rescaled to the norm of g₁.
    torch.testing.assert_close(output, reference * matrix[0].norm() / reference.norm())
    scaled = matrix / matrix.norm(dim=1, keepdim=True)
    direction = output * reference.norm() / output.norm()
    slack = scaled[1:] @ direction - tau * (scaled[1:] ** 2).sum(dim=1)
    assert (slack >= -1e-9).all()


@given(full_rank_matrices(min_m=1, max_m=8, max_n=10))
def test_output_has_the_norm_of_the_first_gradient(matrix: Tensor) -> None:
    output = PCD()(matrix)
    torch.testing.assert_close(output.norm(), matrix[0].norm())


def test_infeasible_constraints_give_the_first_gradient() -> None:
    # g₂ = −g₃: both cannot improve.
    matrix = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(PCD(tau=0.1)(matrix), matrix[0])


def test_dependent_secondary_gradients() -> None:
    # g₃ = 2 g₂: the same constraint twice (up to scale), still solved exactly.
    matrix = torch.tensor(
        [[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-2.0, 2.0, 0.0]], dtype=torch.float64
    )
    expected = PCD(tau=0.5, eps=0.0)(matrix[:2])
    torch.testing.assert_close(PCD(tau=0.5, eps=0.0)(matrix), expected)


def test_single_row_gives_the_row() -> None:
    row = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    torch.testing.assert_close(PCD()(row), row[0])


def test_zero_first_gradient_gives_zeros() -> None:
    matrix = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert torch.equal(PCD()(matrix), torch.zeros(2))


def test_order_of_the_rows_matters() -> None:
    matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    assert not torch.allclose(PCD(tau=0.5)(matrix), PCD(tau=0.5)(matrix.flip(0)))


def test_per_objective_shares() -> None:
    matrix = torch.tensor(
        [[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]], dtype=torch.float64
    )
    output = PCD(tau=torch.tensor([0.0, 0.8]), eps=0.0)(matrix)
    reference = _reference_direction(matrix[[0, 2]], 0.8)
    # τ₂ = 0 only asks for no conflict with g₂, which the τ₃ constraint already gives here.
    assert output @ matrix[1] >= 0
    torch.testing.assert_close(output, reference * matrix[0].norm() / reference.norm())


def test_moving_average_of_squared_norms() -> None:
    weighting = PCDWeighting(beta=0.5)
    gramians = [torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([9.0, 16.0]))]
    for gramian in gramians:
        weighting(gramian.double())
    # v = 0.5·(0.5·(1, 4)) + 0.5·(9, 16), t = 2.
    expected = torch.tensor([4.75, 9.0], dtype=torch.float64)
    torch.testing.assert_close(weighting.second_moment, expected)
    assert int(weighting.step) == 2


def test_wrong_number_of_shares_is_checked_before_anything() -> None:
    weighting = PCDWeighting(tau=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"`tau` must have 1 entries.*m = 2.*shape \[2\]"):
        weighting(torch.eye(2))
    assert weighting.second_moment.shape == (0,)
    assert int(weighting.step) == 0


def test_repr() -> None:
    assert repr(PCD()) == "PCD(tau=0.02, beta=0.999, eps=1e-08)"
    assert repr(PCDWeighting(tau=torch.tensor([0.5]))) == (
        "PCDWeighting(tau=[0.5], beta=0.999, eps=1e-08)"
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"tau": -0.1}, ValueError, "tau"),
        ({"tau": 1.5}, ValueError, "tau"),
        ({"tau": torch.tensor([0.5, 2.0])}, ValueError, "tau"),
        ({"tau": torch.tensor([[0.5]])}, ValueError, "tau"),
        ({"tau": "0.1"}, TypeError, "tau"),
        ({"beta": 1.0}, ValueError, "beta"),
        ({"beta": -0.1}, ValueError, "beta"),
        ({"eps": -1e-8}, ValueError, "eps"),
        ({"eps": float("nan")}, ValueError, "eps"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        PCD(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=f"`{name}`"):
        PCDWeighting(**kwargs)  # type: ignore[arg-type]
