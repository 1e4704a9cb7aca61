"""MatrixWeighting and WeightedAggregator: weightings of the Jacobian itself; loss values and
reset() through the weighted aggregators."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from jdoptim.aggregation import (
    CRMOGMWeighting,
    DBMTLWeighting,
    ExcessMTLWeighting,
    GradNormWeighting,
    GramianWeightedAggregator,
    MatrixWeighting,
    MeanWeighting,
    MoDoWeighting,
    NonDifferentiableError,
    UPGrad,
    WeightedAggregator,
    Weighting,
)


class FirstColumn(MatrixWeighting):
    """Weights = the first column of the Jacobian (differentiable)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, matrix: Tensor, /) -> Tensor:
        self.seen_dtypes.append(matrix.dtype)
        return matrix[:, 0]


class LossWeighting(Weighting):
    """Weights = the loss values (reads them)."""

    requires_losses = True

    def forward(self, gramian: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
        assert losses is not None
        return losses.clone()


MATRIX = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def test_matrix_weighting_is_a_weighting_of_any_2d_matrix() -> None:
    weighting = FirstColumn()
    assert isinstance(weighting, Weighting)
    assert torch.equal(weighting(MATRIX), torch.tensor([1.0, 4.0]))
    assert torch.equal(weighting(torch.ones(3, 1)), torch.ones(3))


@pytest.mark.parametrize("shape", [(3,), (2, 3, 1)])
def test_matrix_weighting_rejects_matrices_that_are_not_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="`matrix` must be a 2-D Jacobian"):
        FirstColumn()(torch.ones(shape))


def test_matrix_weighting_rejects_non_tensors_and_integers() -> None:
    with pytest.raises(TypeError, match="`matrix`"):
        FirstColumn()(MATRIX.tolist())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`matrix`"):
        FirstColumn()(torch.ones(2, 3, dtype=torch.int64))


def test_matrix_weighting_computes_half_precision_in_float32() -> None:
    weighting = FirstColumn()
    weights = weighting(MATRIX.half())
    assert weighting.seen_dtypes == [torch.float32]
    assert weights.dtype == torch.float16


def test_weighted_aggregator_is_the_transposed_jacobian_times_the_weights() -> None:
    aggregator = WeightedAggregator(FirstColumn())
    assert torch.equal(aggregator(MATRIX), torch.tensor([17.0, 22.0, 27.0]))
    assert repr(aggregator) == "WeightedAggregator(FirstColumn())"


def test_weighted_aggregator_fires_the_weighting_hooks() -> None:
    aggregator = WeightedAggregator(FirstColumn())
    seen: list[Tensor] = []
    aggregator.weighting.register_forward_hook(lambda module, args, output: seen.append(output))
    aggregator(MATRIX)
    aggregator(MATRIX)
    assert len(seen) == 2


def test_weighted_aggregator_is_differentiable_as_its_weighting() -> None:
    matrix = MATRIX.clone().requires_grad_()
    WeightedAggregator(FirstColumn())(matrix).sum().backward()
    assert matrix.grad is not None
    matrix = MATRIX.clone().requires_grad_()
    with pytest.raises(NonDifferentiableError, match="not differentiable"):
        WeightedAggregator(ExcessMTLWeighting())(matrix).sum().backward()


def test_weighted_aggregator_refuses_gramian_weightings() -> None:
    with pytest.raises(ValueError, match="`weighting` must read the Jacobian"):
        WeightedAggregator(MeanWeighting())
    with pytest.raises(ValueError, match="`weighting` must read the Jacobian"):
        WeightedAggregator(CRMOGMWeighting(MeanWeighting()))


def test_weighted_aggregator_refuses_non_weightings() -> None:
    with pytest.raises(TypeError, match="`weighting`"):
        WeightedAggregator(UPGrad())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass an instance: FirstColumn\(\)"):
        WeightedAggregator(FirstColumn)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "weighting", [FirstColumn(), ExcessMTLWeighting(), CRMOGMWeighting(ExcessMTLWeighting())]
)
def test_gramian_weighted_aggregator_refuses_jacobian_weightings(weighting: Weighting) -> None:
    with pytest.raises(ValueError, match="`gramian_weighting` must read the Gramian"):
        GramianWeightedAggregator(weighting)


def test_cross_matrix_weightings_accept_square_non_symmetric_matrices() -> None:
    cross = torch.tensor([[2.0, -1.0], [0.5, 1.0]])
    assert torch.isfinite(MoDoWeighting()(cross)).all()
    with pytest.raises(ValueError, match="`gramian` must be a square matrix"):
        MoDoWeighting()(torch.ones(2, 3))


# --- loss values -------------------------------------------------------------------------------


def test_loss_aware_weighting_reads_the_losses() -> None:
    losses = torch.tensor([0.5, 2.0])
    assert torch.equal(LossWeighting()(torch.eye(2), losses=losses), losses)


@pytest.mark.parametrize(
    "aggregator",
    [
        GramianWeightedAggregator(LossWeighting()),
        WeightedAggregator(CRMOGMWeighting(FirstColumn())),
    ],
)
def test_aggregators_forward_the_losses_flag(aggregator: torch.nn.Module) -> None:
    expected = isinstance(aggregator, GramianWeightedAggregator)
    assert aggregator.requires_losses == expected


def test_gramian_weighted_aggregator_forwards_the_losses() -> None:
    aggregator = GramianWeightedAggregator(LossWeighting())
    assert aggregator.requires_losses
    output = aggregator(MATRIX, losses=torch.tensor([1.0, 0.5]))
    assert torch.equal(output, torch.tensor([3.0, 4.5, 6.0]))


def test_weighted_aggregator_forwards_the_losses() -> None:
    class LossTimesFirstColumn(FirstColumn):
        requires_losses = True

        def forward(self, matrix: Tensor, /, *, losses: Tensor | None = None) -> Tensor:
            assert losses is not None
            return matrix[:, 0] * losses

    aggregator = WeightedAggregator(LossTimesFirstColumn())
    assert aggregator.requires_losses
    output = aggregator(MATRIX, losses=torch.tensor([1.0, 0.25]))
    assert torch.equal(output, torch.tensor([5.0, 7.0, 9.0]))


@pytest.mark.parametrize(
    "call",
    [
        lambda: LossWeighting()(torch.eye(2)),
        lambda: GramianWeightedAggregator(LossWeighting())(MATRIX),
        lambda: DBMTLWeighting()(torch.eye(2)),
        lambda: GradNormWeighting()(torch.eye(2)),
        lambda: CRMOGMWeighting(GradNormWeighting())(torch.eye(2)),
    ],
)
def test_missing_losses_is_a_type_error_naming_them(call: object) -> None:
    with pytest.raises(TypeError, match="keyword argument `losses`"):
        call()  # type: ignore[operator]


def test_losses_of_the_wrong_shape_or_type_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"`losses` must have shape \[m\] = \[2\]"):
        LossWeighting()(torch.eye(2), losses=torch.ones(3))
    with pytest.raises(TypeError, match=r"`losses` must be a torch\.Tensor"):
        LossWeighting()(torch.eye(2), losses=[1.0, 2.0])  # type: ignore[arg-type]


def test_losses_are_detached_and_cast_to_the_statistic() -> None:
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    weights = LossWeighting()(torch.eye(2), losses=losses)
    assert weights.dtype == torch.float32
    assert not weights.requires_grad


def test_losses_are_ignored_by_weightings_that_do_not_read_them() -> None:
    assert torch.equal(MeanWeighting()(torch.eye(2), losses=torch.ones(5)), torch.full((2,), 0.5))


def test_aggregate_passes_the_losses_and_returns_the_weights() -> None:
    aggregator = GramianWeightedAggregator(LossWeighting())
    output, weights, gramian = aggregator.aggregate(MATRIX, losses=torch.tensor([1.0, 0.5]))
    assert torch.equal(output, torch.tensor([3.0, 4.5, 6.0]))
    assert weights is not None and torch.equal(weights, torch.tensor([1.0, 0.5]))
    assert gramian is not None and torch.equal(gramian, MATRIX @ MATRIX.T)
    output, weights, gramian = WeightedAggregator(FirstColumn()).aggregate(MATRIX)
    assert weights is not None and torch.equal(weights, torch.tensor([1.0, 4.0]))
    assert gramian is None and torch.equal(output, torch.tensor([1.0, 4.0]) @ MATRIX)


# --- reset -------------------------------------------------------------------------------------


def test_aggregators_forward_reset_to_their_weighting() -> None:
    gramian_aggregator = GramianWeightedAggregator(MoDoWeighting())
    gramian_aggregator(MATRIX)
    assert gramian_aggregator.gramian_weighting.weights.shape == (2,)
    gramian_aggregator.reset()
    assert gramian_aggregator.gramian_weighting.weights.shape == (0,)

    aggregator = WeightedAggregator(ExcessMTLWeighting())
    aggregator(MATRIX)
    assert int(aggregator.weighting.step) == 1
    aggregator.reset()
    assert int(aggregator.weighting.step) == 0


def test_reset_of_a_stateless_weighting_does_nothing() -> None:
    aggregator = GramianWeightedAggregator(MeanWeighting())
    aggregator.reset()
    assert torch.equal(aggregator(MATRIX), torch.tensor([2.5, 3.5, 4.5]))


def test_crmogm_reset_also_resets_its_inner_weighting() -> None:
    weighting = CRMOGMWeighting(MoDoWeighting())
    weighting(torch.eye(3))
    assert weighting.weighting.weights.shape == (3,)  # type: ignore[union-attr]
    weighting.reset()
    assert weighting.weights.shape == (0,)
    assert weighting.weighting.weights.shape == (0,)  # type: ignore[union-attr]
