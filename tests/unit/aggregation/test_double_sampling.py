"""DoubleSampling: the cross block it reads, where it puts the weights, and its arguments."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from jdoptim.aggregation import (
    DoubleSampling,
    ExcessMTLWeighting,
    GradNormWeighting,
    MoDoWeighting,
    SDMGradWeighting,
    UPGrad,
)


def _gramian(jacobians: Tensor) -> Tensor:
    """The generalized Gramian [k, m, m, k] of losses [k, m] with Jacobians [k, m, n]."""
    return torch.einsum("aip,bjp->aijb", jacobians, jacobians)


def _jacobians(k: int, seed: int = 0) -> Tensor:
    return torch.randn(k, 3, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_third_batch_gets_the_weights_of_the_cross_block() -> None:
    jacobians = _jacobians(3)
    weights = DoubleSampling(MoDoWeighting())(_gramian(jacobians))
    expected = MoDoWeighting()(jacobians[0] @ jacobians[1].T)
    assert weights.shape == (3, 3)
    assert torch.equal(weights[:2], torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(weights[2], expected)


def test_mean_update_halves_the_weights_on_the_two_batches() -> None:
    jacobians = _jacobians(2)
    weights = DoubleSampling(SDMGradWeighting(), update="mean")(_gramian(jacobians))
    expected = SDMGradWeighting()(jacobians[0] @ jacobians[1].T)
    torch.testing.assert_close(weights, torch.stack([expected, expected]) / 2)


def test_the_update_is_the_third_batch_gradient_combination() -> None:
    jacobians = _jacobians(3)
    weights = DoubleSampling(MoDoWeighting())(_gramian(jacobians))
    update = torch.einsum("ai,aip->p", weights, jacobians)
    torch.testing.assert_close(update, weights[2] @ jacobians[2])


def test_state_of_the_inner_weighting_advances_and_resets() -> None:
    weighting = DoubleSampling(MoDoWeighting())
    first = weighting(_gramian(_jacobians(3)))
    second = weighting(_gramian(_jacobians(3)))
    assert not torch.equal(first, second)
    weighting.reset()
    assert torch.equal(weighting(_gramian(_jacobians(3))), first)
    assert set(weighting.state_dict()) == {"weighting.weights"}


@pytest.mark.parametrize(("update", "k"), [("third", 2), ("mean", 3)])
def test_wrong_number_of_batches(update: str, k: int) -> None:
    with pytest.raises(ValueError, match=r"`generalized_gramian` must have shape \[k, m, m, k\]"):
        DoubleSampling(MoDoWeighting(), update=update)(_gramian(_jacobians(k)))


def test_losses_of_another_rank_are_refused() -> None:
    with pytest.raises(ValueError, match="`generalized_gramian`"):
        DoubleSampling(MoDoWeighting())(torch.eye(3))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`update`"):
        DoubleSampling(MoDoWeighting(), update="first")
    with pytest.raises(TypeError, match="`weighting`"):
        DoubleSampling(UPGrad())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`weighting` must read an"):
        DoubleSampling(ExcessMTLWeighting())
    with pytest.raises(ValueError, match="`weighting` must read an"):
        DoubleSampling(GradNormWeighting())


def test_repr_and_str() -> None:
    weighting = DoubleSampling(MoDoWeighting(), update="mean")
    assert repr(weighting) == "DoubleSampling(MoDoWeighting(gamma=0.1, rho=0.1), update='mean')"
    assert str(weighting) == "DoubleSampling(MoDoWeighting)"
