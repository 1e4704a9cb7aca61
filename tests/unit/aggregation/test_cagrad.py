"""CAGrad and CAGradWeighting: conflict-averse gradient (needs cvxpy)."""

from __future__ import annotations

import copy
import pickle
import warnings

import cvxpy
import pytest
import torch
from torch import Tensor

from jdoptim.aggregation import CAGrad, CAGradWeighting, Mean, NonDifferentiableError

J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def _points_in_ball(center: Tensor, radius: float, count: int) -> Tensor:
    directions = torch.randn(count, center.shape[0], dtype=center.dtype)
    directions = directions / directions.norm(dim=1, keepdim=True)
    radii = radius * torch.rand(count, 1, dtype=center.dtype) ** (1.0 / center.shape[0])
    return center + radii * directions


def test_reference_value() -> None:
    output = CAGrad(c=0.5)(J)

    # g0 = (1, 1, 1) and the worst row is g1: the best d in the ball is g0 + r g1/‖g1‖.
    g1, g0 = J[0], J.mean(dim=0)
    expected = g0 + 0.5 * g0.norm() * g1 / g1.norm()
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(output, torch.tensor([0.1835, 1.2041, 1.2041]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("c", [0.1, 0.5, 2.0])
def test_output_maximises_the_worst_improvement_in_the_ball(c: float) -> None:
    matrix = torch.randn(3, 4, dtype=torch.float64)
    mean = matrix.mean(dim=0)
    radius = c * mean.norm().item()

    output = CAGrad(c=c)(matrix)

    assert (output - mean).norm() <= radius * (1 + 1e-5)
    candidates = _points_in_ball(mean, radius, 4000)
    best_sampled = (candidates @ matrix.T).min(dim=1).values.max()
    assert (matrix @ output).min() >= best_sampled - 1e-6 * matrix.norm()


def test_c_zero_gives_the_mean() -> None:
    matrix = torch.randn(4, 5)

    torch.testing.assert_close(CAGrad(c=0.0)(matrix), Mean()(matrix), atol=1e-5, rtol=1e-5)


def test_weighting_reference_value() -> None:
    weights = CAGradWeighting(c=0.5)(J @ J.T)

    torch.testing.assert_close(weights, torch.tensor([0.7041, 0.5000]), atol=1e-4, rtol=0)


def test_small_gramian_gives_zero_weights() -> None:
    matrix = torch.full((2, 3), 1e-3)  # trace 6e-6 < norm_eps

    assert CAGradWeighting(c=0.5)(matrix @ matrix.T).tolist() == [0.0, 0.0]
    assert CAGrad(c=0.5)(torch.zeros(2, 3)).tolist() == [0.0, 0.0, 0.0]


def test_single_row_and_single_column() -> None:
    # m = 1: g0 = g1, the best d is g1 + c g1.
    output = CAGrad(c=0.5)(torch.tensor([[2.0, -1.0]]))
    torch.testing.assert_close(output, torch.tensor([3.0, -1.5]))
    assert torch.isfinite(CAGrad(c=0.5)(torch.randn(3, 1))).all()


def test_dtypes_are_kept() -> None:
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        output = CAGrad(c=0.5)(J.to(dtype))
        assert output.dtype == dtype
        torch.testing.assert_close(
            output.double(), torch.tensor([0.1835, 1.2041, 1.2041]).double(), atol=2e-2, rtol=0
        )


def test_non_finite_input_gives_nan_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (float("nan"), float("inf")):
            output = CAGrad(c=0.5)(torch.tensor([[value, 1.0], [1.0, 2.0]]))
            assert output.isnan().all()


def test_solver_failure_warns_and_uses_the_uniform_combination(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(self: cvxpy.Problem, *args: object, **kwargs: object) -> None:
        raise cvxpy.error.SolverError("forced failure")

    monkeypatch.setattr(cvxpy.Problem, "solve", fail)

    with pytest.warns(RuntimeWarning, match="CAGrad.*forced failure.*uniform"):
        weights = CAGradWeighting(c=0.5)(J @ J.T)

    # u = 1/m gives ‖Rᵀu‖ = ‖g0‖, hence w = (1 + c)/m.
    torch.testing.assert_close(weights, torch.tensor([0.75, 0.75]))


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"c": -0.1}, ValueError, "c"),
        ({"c": float("nan")}, ValueError, "c"),
        ({"c": "0.5"}, TypeError, "c"),
        ({"c": 0.5, "norm_eps": -1e-4}, ValueError, "norm_eps"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], error: type, name: str) -> None:
    with pytest.raises(error, match=f"`{name}`"):
        CAGrad(**kwargs)  # type: ignore[arg-type]


def test_missing_cvxpy_raises_an_import_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "cvxpy", None)

    with pytest.raises(ImportError, match=r'pip install "jdoptim\[cagrad\]"'):
        CAGrad(c=0.5)
    with pytest.raises(ImportError, match=r"jdoptim\[cagrad\]"):
        CAGradWeighting(c=0.5)


def test_backward_raises_non_differentiable_error() -> None:
    matrix = J.clone().requires_grad_()

    with pytest.raises(NonDifferentiableError, match="CAGrad"):
        CAGrad(c=0.5)(matrix).sum().backward()


def test_copies_and_pickles_after_use() -> None:
    aggregator = CAGrad(c=0.5)
    expected = aggregator(J)

    for duplicate in (copy.deepcopy(aggregator), pickle.loads(pickle.dumps(aggregator))):
        torch.testing.assert_close(duplicate(J), expected)


def test_repr_and_str() -> None:
    aggregator = CAGrad(c=0.5)

    assert repr(aggregator) == "CAGrad(c=0.5, norm_eps=0.0001)"
    assert str(aggregator) == "CAGrad"
    assert repr(aggregator.gramian_weighting) == "CAGradWeighting(c=0.5, norm_eps=0.0001)"
