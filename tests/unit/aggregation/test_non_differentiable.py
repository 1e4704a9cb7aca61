"""The guard of non-differentiable aggregators and weightings."""

from __future__ import annotations

import pytest
import torch

from jdoptim.aggregation import (
    DualProjWeighting,
    IMTLGWeighting,
    MeanWeighting,
    NonDifferentiableError,
    UPGrad,
    UPGradWeighting,
)


@pytest.mark.parametrize("weighting", [UPGradWeighting(), DualProjWeighting(), IMTLGWeighting()])
def test_weights_computed_outside_autograd_still_refuse_backward(weighting) -> None:
    # The QP solvers run in numpy: without the guard the weights would silently act as constants.
    gramian = torch.tensor([[2.0, -1.0], [-1.0, 3.0]], requires_grad=True)
    weights = weighting(gramian)
    assert weights.requires_grad
    with pytest.raises(NonDifferentiableError, match=type(weighting).__name__):
        weights.sum().backward()


def test_error_is_a_runtime_error_naming_the_aggregator() -> None:
    matrix = torch.tensor([[1.0, 2.0], [3.0, -4.0]], requires_grad=True)
    with pytest.raises(RuntimeError, match="UPGrad is not differentiable"):
        UPGrad()(matrix).sum().backward()


def test_no_guard_without_grad() -> None:
    weights = UPGradWeighting()(torch.tensor([[2.0, -1.0], [-1.0, 3.0]]))
    assert not weights.requires_grad
    assert weights.grad_fn is None


def test_differentiable_weighting_is_left_alone() -> None:
    gramian = torch.eye(2, requires_grad=True)
    weights = MeanWeighting()(gramian)
    assert not weights.requires_grad  # uniform weights do not depend on the Gramian
