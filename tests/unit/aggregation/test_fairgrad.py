"""FairGrad: values, the stationarity condition, scale covariance, edge cases and arguments."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _matrices import full_rank_matrices
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from jdoptim.aggregation import FairGrad, FairGradWeighting, GramianWeightedAggregator

REPOSITORY = Path(__file__).resolve().parents[3]


def test_orthogonal_rows_have_closed_form_weights() -> None:
    # For G = diag(d): d_i w_i = w_i^(-1/α), so w_i = d_i^(-α/(1+α)).
    gramian = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 9.0]], dtype=torch.float64)
    for alpha in (0.5, 1.0, 2.0):
        expected = torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64) ** (-alpha / (1 + alpha))
        torch.testing.assert_close(FairGradWeighting(alpha)(gramian), expected, rtol=1e-7, atol=0)


def test_proportional_fairness_of_two_aligned_rows() -> None:
    # α = 1, G = [[1, 1], [1, 1]]: w_i (w_1 + w_2) = 1 gives w = [1/√2, 1/√2].
    weights = FairGradWeighting(1.0)(torch.ones(2, 2, dtype=torch.float64))
    torch.testing.assert_close(weights, torch.full((2,), 1 / math.sqrt(2), dtype=torch.float64))


def test_alpha_zero_is_the_mean() -> None:
    matrix = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    assert torch.equal(FairGrad(0.0)(matrix), matrix.mean(dim=0))


def test_single_row() -> None:
    # m = 1: w = G₁₁^(-α/(1+α)).
    weights = FairGradWeighting(2.0)(torch.tensor([[9.0]], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([9.0 ** (-2 / 3)], dtype=torch.float64))


def test_zero_rows_get_zero_weight_and_leave_the_system() -> None:
    gramian = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    weights = FairGradWeighting(1.0)(gramian)
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64))
    assert torch.equal(FairGradWeighting(1.0)(torch.zeros(3, 3)), torch.zeros(3))


def test_non_finite_gramian_gives_nan() -> None:
    gramian = torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]])
    assert torch.isnan(FairGradWeighting(1.0)(gramian)).all()


@given(full_rank_matrices(min_m=2, max_m=6, max_n=12), st.sampled_from([0.5, 1.0, 2.0, 5.0]))
def test_weights_solve_the_stationarity_condition(matrix: Tensor, alpha: float) -> None:
    if matrix.shape[0] > matrix.shape[1]:
        return  # Full row rank guarantees a direction improving every objective, hence a root.
    gramian = matrix @ matrix.T
    if torch.linalg.cond(gramian) > 100:
        # Ill-conditioned: the solver's default tolerances (1e-8 on the step and gradient) stop
        # it further from the root, e.g. 1e-4 relative at a condition number of 2e3.
        return
    weights = FairGradWeighting(alpha)(gramian)
    assert (weights > 0).all()
    torch.testing.assert_close(gramian @ weights, weights ** (-1 / alpha), rtol=1e-6, atol=0)


@given(
    full_rank_matrices(min_m=1, max_m=6, max_n=12),
    st.sampled_from([0.3, 1.0, 3.0]),
    st.sampled_from([1e-8, 1e-3, 7.0, 1e8]),
)
def test_scale_covariance(matrix: Tensor, alpha: float, scale: float) -> None:
    if matrix.shape[0] > matrix.shape[1]:
        return  # Without a root the weights are the solver's last iterate: only finite.
    aggregator = FairGrad(alpha)
    expected = scale ** ((1 - alpha) / (1 + alpha)) * aggregator(matrix)
    torch.testing.assert_close(aggregator(scale * matrix), expected, rtol=1e-6, atol=0)


def test_without_a_root_the_weights_are_finite() -> None:
    # Rows summing to zero: no direction improves both.
    matrix = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    assert torch.isfinite(FairGrad(1.0)(matrix)).all()


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("gap", [1e-3, 1e-5, 1e-7])
def test_nearly_opposite_rows_find_their_far_root_without_least_squares(
    alpha: float, gap: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Gradients at 1 - gap of being opposite: a root exists, with weights that grow like
    # gap^(-α/(1+α)), far from the start; Newton's steps, damped on the convex potential whose
    # gradient is the residual, must reach it (scipy's least squares is made to fail).
    import scipy.optimize

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the least-squares fallback was used")

    monkeypatch.setattr(scipy.optimize, "least_squares", refuse)
    c = 1.0 - gap
    gramian = torch.tensor([[2.0, -c], [-c, 0.5]], dtype=torch.float64)

    weights = FairGradWeighting(alpha)(gramian)

    target = weights ** (-1.0 / alpha)
    residual = gramian @ weights - target
    # K w cancels to about gap of its terms, so its rounding is ~1e-16 / gap of the target.
    assert (residual.abs() <= 1e-13 / gap * target.abs()).all()
    assert (weights > 0).all()


def test_max_iters_bounds_the_solver() -> None:
    matrix = torch.randn(5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gramian = matrix @ matrix.T
    short = FairGradWeighting(2.0, max_iters=1)(gramian)
    assert torch.equal(short, torch.full((5,), 0.2, dtype=torch.float64) * short[0] / 0.2)
    converged = FairGradWeighting(2.0)(gramian)
    assert not torch.allclose(short, converged)


def test_is_gramian_weighted_and_repr() -> None:
    aggregator = FairGrad(0.5, max_iters=30)
    assert isinstance(aggregator, GramianWeightedAggregator)
    assert repr(aggregator) == "FairGrad(alpha=0.5, max_iters=30)"
    assert repr(aggregator.gramian_weighting) == "FairGradWeighting(alpha=0.5, max_iters=30)"
    assert str(aggregator) == "FairGrad"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"alpha": -0.1}, ValueError, "alpha"),
        ({"alpha": float("inf")}, ValueError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"alpha": "1"}, TypeError, "alpha"),
        ({"alpha": True}, TypeError, "alpha"),
        ({"alpha": 1.0, "max_iters": 0}, ValueError, "max_iters"),
        ({"alpha": 1.0, "max_iters": 2.5}, TypeError, "max_iters"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        FairGrad(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=f"`{name}`"):
        FairGradWeighting(**kwargs)  # type: ignore[arg-type]


def test_attributes_are_validated_on_set() -> None:
    weighting = FairGradWeighting(1.0)
    weighting.alpha = 2.0
    assert weighting.alpha == 2.0
    with pytest.raises(ValueError, match="`alpha`"):
        weighting.alpha = -1.0
    assert weighting.alpha == 2.0


def test_needs_scipy_only_at_construction() -> None:
    script = (
        "import sys\n"
        "sys.modules['scipy'] = None\n"
        "sys.modules['scipy.optimize'] = None\n"
        "import jdoptim.aggregation as aggregation\n"
        "try:\n"
        "    aggregation.FairGrad(1.0)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPOSITORY,
        timeout=120,
        check=True,
    )
    assert 'pip install "jdoptim[fairgrad]"' in result.stdout
    assert "FairGrad" in result.stdout
