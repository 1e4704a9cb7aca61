"""The contract of the base classes: Aggregator, Weighting, GramianWeightedAggregator,
GeneralizedWeighting and Flattening."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from jdoptim.aggregation import (
    Aggregator,
    Flattening,
    GeneralizedWeighting,
    GramianWeightedAggregator,
    Mean,
    MeanWeighting,
    NonDifferentiableError,
    SumWeighting,
    UPGradWeighting,
    Weighting,
)


class FirstRow(Aggregator):
    """Returns the first row; records the dtype its forward received."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, matrix: Tensor, /) -> Tensor:
        self.seen_dtypes.append(matrix.dtype)
        return matrix[0] * 2.0


class NonDifferentiableFirstRow(FirstRow):
    differentiable = False


class PositionalWeighting(Weighting):
    """``w = G @ [1, 2, …, m]``: depends on the Gramian and on the order of its rows."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, gramian: Tensor, /) -> Tensor:
        self.seen_dtypes.append(gramian.dtype)
        positions = torch.arange(1, gramian.shape[0] + 1, dtype=gramian.dtype)
        return gramian @ positions


class NonDifferentiablePositionalWeighting(PositionalWeighting):
    differentiable = False


class DiagonalWeighting(GeneralizedWeighting):
    """Returns the diagonal of the generalized Gramian, reshaped as the losses."""

    def forward(self, generalized_gramian: Tensor, /) -> Tensor:
        k = generalized_gramian.dim() // 2
        shape = generalized_gramian.shape[:k]
        permuted = generalized_gramian.permute(*range(k), *range(2 * k - 1, k - 1, -1))
        return permuted.reshape(shape.numel(), shape.numel()).diagonal().reshape(shape)


# --- Aggregator ---------------------------------------------------------------------------------


def test_aggregator_is_abstract() -> None:
    with pytest.raises(TypeError):
        Aggregator()  # type: ignore[abstract]


def test_aggregator_returns_forward_output() -> None:
    matrix = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(FirstRow()(matrix), torch.tensor([2.0, 4.0]))


@pytest.mark.parametrize("not_a_tensor", [[[1.0, 2.0]], 3.0, None])
def test_aggregator_rejects_non_tensors(not_a_tensor: object) -> None:
    with pytest.raises(TypeError, match="`matrix`"):
        FirstRow()(not_a_tensor)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4), (1, 1, 1, 1)])
def test_aggregator_rejects_matrices_that_are_not_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"`matrix`.*2-D.*" + str(list(shape)).replace("[", r"\[")):
        FirstRow()(torch.zeros(shape))


def test_aggregator_rejects_integer_matrices() -> None:
    with pytest.raises(TypeError, match=r"`matrix`.*floating"):
        FirstRow()(torch.ones(2, 3, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_aggregator_computes_half_precision_in_float32(dtype: torch.dtype) -> None:
    aggregator = FirstRow()
    output = aggregator(torch.ones(2, 3, dtype=dtype))
    assert aggregator.seen_dtypes == [torch.float32]
    assert output.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_aggregator_keeps_single_and_double_precision(dtype: torch.dtype) -> None:
    aggregator = FirstRow()
    output = aggregator(torch.ones(2, 3, dtype=dtype))
    assert aggregator.seen_dtypes == [dtype]
    assert output.dtype == dtype


def test_aggregator_takes_the_matrix_positionally_only() -> None:
    with pytest.raises(TypeError):
        FirstRow()(matrix=torch.ones(2, 3))  # type: ignore[call-arg]


def test_differentiable_aggregator_backpropagates() -> None:
    matrix = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    FirstRow()(matrix).sum().backward()
    assert matrix.grad is not None
    assert torch.equal(matrix.grad, torch.tensor([[2.0, 2.0], [0.0, 0.0]]))


def test_non_differentiable_aggregator_raises_on_backward() -> None:
    matrix = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    output = NonDifferentiableFirstRow()(matrix)
    with pytest.raises(NonDifferentiableError, match="NonDifferentiableFirstRow"):
        output.sum().backward()


def test_non_differentiable_aggregator_output_equals_forward_output() -> None:
    matrix = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    assert torch.equal(NonDifferentiableFirstRow()(matrix), torch.tensor([2.0, 4.0]))


def test_non_differentiable_aggregator_without_grad_returns_plain_tensor() -> None:
    output = NonDifferentiableFirstRow()(torch.ones(2, 3))
    assert not output.requires_grad


def test_aggregator_default_repr_and_str() -> None:
    assert repr(FirstRow()) == "FirstRow()"
    assert str(FirstRow()) == "FirstRow"


def test_aggregator_forward_hooks_fire_on_every_call() -> None:
    aggregator = FirstRow()
    outputs: list[Tensor] = []
    aggregator.register_forward_hook(lambda module, args, output: outputs.append(output))
    for _ in range(3):
        aggregator(torch.ones(2, 3))
    assert len(outputs) == 3


# --- Weighting ----------------------------------------------------------------------------------


def test_weighting_is_abstract() -> None:
    with pytest.raises(TypeError):
        Weighting()  # type: ignore[abstract]


def test_weighting_returns_forward_output() -> None:
    gramian = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    assert torch.equal(PositionalWeighting()(gramian), torch.tensor([4.0, 7.0]))


@pytest.mark.parametrize("not_a_tensor", [[[1.0]], 1.0, None])
def test_weighting_rejects_non_tensors(not_a_tensor: object) -> None:
    with pytest.raises(TypeError, match="`gramian`"):
        PositionalWeighting()(not_a_tensor)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(3,), (2, 3), (3, 2), (2, 2, 2)])
def test_weighting_rejects_gramians_that_are_not_square(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError, match=r"`gramian`.*square.*" + str(list(shape)).replace("[", r"\[")
    ):
        PositionalWeighting()(torch.zeros(shape))


def test_weighting_rejects_integer_gramians() -> None:
    with pytest.raises(TypeError, match=r"`gramian`.*floating"):
        PositionalWeighting()(torch.eye(2, dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_weighting_computes_half_precision_in_float32(dtype: torch.dtype) -> None:
    weighting = PositionalWeighting()
    weights = weighting(torch.eye(2, dtype=dtype))
    assert weighting.seen_dtypes == [torch.float32]
    assert weights.dtype == dtype
    assert torch.equal(weights, torch.tensor([1.0, 2.0], dtype=dtype))


def test_weighting_takes_the_gramian_positionally_only() -> None:
    with pytest.raises(TypeError):
        PositionalWeighting()(gramian=torch.eye(2))  # type: ignore[call-arg]


def test_non_differentiable_weighting_raises_on_backward() -> None:
    gramian = torch.eye(2, requires_grad=True)
    weights = NonDifferentiablePositionalWeighting()(gramian)
    with pytest.raises(NonDifferentiableError):
        weights.sum().backward()


def test_differentiable_weighting_backpropagates() -> None:
    gramian = torch.eye(2, requires_grad=True)
    PositionalWeighting()(gramian).sum().backward()
    assert gramian.grad is not None
    assert torch.equal(gramian.grad, torch.tensor([[1.0, 2.0], [1.0, 2.0]]))


def test_weighting_default_repr_and_str() -> None:
    assert repr(PositionalWeighting()) == "PositionalWeighting()"
    assert str(PositionalWeighting()) == "PositionalWeighting"


# --- GramianWeightedAggregator ------------------------------------------------------------------


def test_gramian_weighted_aggregator_combines_rows_with_weights_of_the_gramian() -> None:
    matrix = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    # G = [[5, -2], [-2, 2]], w = G @ [1, 2] = [1, 2], Jᵀw = [1, 2, 0].
    output = GramianWeightedAggregator(PositionalWeighting())(matrix)
    assert torch.equal(output, torch.tensor([1.0, 2.0, 0.0]))


def test_gramian_weighted_aggregator_exposes_its_weighting() -> None:
    weighting = PositionalWeighting()
    aggregator = GramianWeightedAggregator(weighting)
    assert aggregator.gramian_weighting is weighting
    assert aggregator.weighting is weighting


def test_gramian_weighted_aggregator_rejects_non_weightings() -> None:
    with pytest.raises(TypeError, match="`gramian_weighting`"):
        GramianWeightedAggregator(Mean())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"the class MeanWeighting .*MeanWeighting\(\)"):
        GramianWeightedAggregator(MeanWeighting)  # type: ignore[arg-type]


def test_gramian_weighted_aggregator_fires_weighting_hooks_on_every_call() -> None:
    aggregator = GramianWeightedAggregator(SumWeighting())
    weights: list[Tensor] = []
    aggregator.gramian_weighting.register_forward_hook(
        lambda module, args, output: weights.append(output)
    )
    for _ in range(3):
        aggregator(torch.ones(2, 3))
    assert len(weights) == 3
    assert torch.equal(weights[0], torch.ones(2))


def test_gramian_weighted_aggregator_repr_and_str() -> None:
    aggregator = GramianWeightedAggregator(MeanWeighting())
    assert repr(aggregator) == "GramianWeightedAggregator(MeanWeighting())"
    assert str(aggregator) == "GramianWeightedAggregator"


def test_gramian_weighted_aggregator_state_dict_contains_the_weighting() -> None:
    class BufferWeighting(Weighting):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scale", torch.tensor(2.0))

        def forward(self, gramian: Tensor, /) -> Tensor:
            return self.scale * gramian.new_ones(gramian.shape[0])

    aggregator = GramianWeightedAggregator(BufferWeighting())
    state = aggregator.state_dict()
    assert list(state) == ["gramian_weighting.scale"]
    state["gramian_weighting.scale"] = torch.tensor(3.0)
    aggregator.load_state_dict(state)
    assert torch.equal(aggregator(torch.eye(2)), torch.tensor([3.0, 3.0]))


# --- GeneralizedWeighting and Flattening --------------------------------------------------------


def test_generalized_weighting_is_abstract() -> None:
    with pytest.raises(TypeError):
        GeneralizedWeighting()  # type: ignore[abstract]


def test_generalized_weighting_rejects_non_tensors() -> None:
    with pytest.raises(TypeError, match="`generalized_gramian`"):
        DiagonalWeighting()([[1.0]])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "shape", [(3,), (2, 3), (2, 3, 3), (2, 3, 2, 3), (2, 3, 3, 3), (2, 2, 1, 2)]
)
def test_generalized_weighting_rejects_malformed_shapes(shape: tuple[int, ...]) -> None:
    pattern = r"`generalized_gramian`.*" + str(list(shape)).replace("[", r"\[")
    with pytest.raises(ValueError, match=pattern):
        DiagonalWeighting()(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(3, 3), (2, 3, 3, 2), (2, 1, 4, 4, 1, 2)])
def test_generalized_weighting_accepts_well_formed_shapes(shape: tuple[int, ...]) -> None:
    assert DiagonalWeighting()(torch.zeros(shape)).shape == shape[: len(shape) // 2]


def test_generalized_weighting_takes_the_gramian_positionally_only() -> None:
    with pytest.raises(TypeError):
        DiagonalWeighting()(generalized_gramian=torch.eye(2))  # type: ignore[call-arg]


def _generalized_gramian(jacobian: Tensor) -> Tensor:
    """``Γ[i, j, k, l] = ⟨J[i, j], J[l, k]⟩`` for a Jacobian J of shape ``[m1, m2, n]``."""
    return torch.einsum("ijp,lkp->ijkl", jacobian, jacobian)


@pytest.mark.parametrize(
    "weighting",
    [PositionalWeighting(), UPGradWeighting(pref_vector=torch.arange(1.0, 7.0))],
    ids=["positional", "UPGrad(pref)"],
)
def test_flattening_equals_the_weighting_of_the_flattened_gramian(weighting: Weighting) -> None:
    torch.manual_seed(0)
    jacobian = torch.randn(2, 3, 5)
    generalized_gramian = _generalized_gramian(jacobian)
    assert generalized_gramian.shape == (2, 3, 3, 2)
    flat_jacobian = jacobian.reshape(6, 5)
    expected = weighting(flat_jacobian @ flat_jacobian.T).reshape(2, 3)

    weights = Flattening(weighting)(generalized_gramian)

    assert weights.shape == (2, 3)
    torch.testing.assert_close(weights, expected)


def test_flattening_with_positional_weighting_gives_exact_values() -> None:
    # J = [[e1, e2, e3], [e1, 0, 0]] (shape [2, 3, 3]); flattened rows e1, e2, e3, e1, 0, 0.
    jacobian = torch.zeros(2, 3, 3)
    jacobian[0] = torch.eye(3)
    jacobian[1, 0, 0] = 1.0
    # G = flattened Gramian: rows 0 and 3 equal e1·e1 = 1 on columns {0, 3}.
    # w = G @ [1, 2, 3, 4, 5, 6] = [1 + 4, 2, 3, 1 + 4, 0, 0].
    weights = Flattening(PositionalWeighting())(_generalized_gramian(jacobian))
    assert torch.equal(weights, torch.tensor([[5.0, 2.0, 3.0], [5.0, 0.0, 0.0]]))


def test_flattening_of_a_plain_gramian_is_the_weighting() -> None:
    gramian = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    assert torch.equal(Flattening(PositionalWeighting())(gramian), torch.tensor([4.0, 7.0]))


def test_flattening_rejects_non_weightings() -> None:
    with pytest.raises(TypeError, match="`weighting`"):
        Flattening(Mean())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"the class MeanWeighting .*MeanWeighting\(\)"):
        Flattening(MeanWeighting)  # type: ignore[arg-type]


def test_flattening_fires_hooks_of_its_weighting() -> None:
    weighting = MeanWeighting()
    calls: list[Tensor] = []
    weighting.register_forward_hook(lambda module, args, output: calls.append(args[0]))
    Flattening(weighting)(torch.ones(2, 3, 3, 2))
    assert len(calls) == 1
    assert calls[0].shape == (6, 6)


def test_flattening_repr_and_str() -> None:
    assert repr(Flattening(MeanWeighting())) == "Flattening(MeanWeighting())"
    assert str(Flattening(MeanWeighting())) == "Flattening(MeanWeighting)"
