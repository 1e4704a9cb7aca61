"""Behaviour every aggregator and weighting owes its users: positional input, hooks, state dicts,
dtypes, devices, edge shapes and the errors of bad input."""

from __future__ import annotations

import inspect

import pytest
import torch
from _aggregators import (
    ALL_CASES,
    CAGRAD,
    CONSTANT,
    GRAMIAN_WEIGHTED,
    JACOBIAN_WEIGHTED,
    MEAN,
    MGDA,
    NASH_MTL,
    NON_DIFFERENTIABLE,
    SUM,
    AggregatorCase,
    class_name,
    params,
)
from torch import Tensor

from jdoptim.aggregation import (
    Aggregator,
    Constant,
    GradDrop,
    GramianWeightedAggregator,
    NonDifferentiableError,
    Weighting,
)

DIFFERENTIABLE_CASES = [case for case in ALL_CASES if class_name(case) not in NON_DIFFERENTIABLE]
NON_DIFFERENTIABLE_CASES = [case for case in ALL_CASES if class_name(case) in NON_DIFFERENTIABLE]
WEIGHTED_CASES = [case for case in ALL_CASES if class_name(case) in GRAMIAN_WEIGHTED]
UNWEIGHTED_CASES = [
    case for case in ALL_CASES if class_name(case) not in GRAMIAN_WEIGHTED | JACOBIAN_WEIGHTED
]

#: Aggregators that return the row itself for a single-row matrix, by their definition.
IDENTITY_ON_ONE_ROW = {
    "UPGrad",
    "DualProj",
    "MGDA",
    "IMTLG",
    "AlignedMTL",
    "PCGrad",
    "Mean",
    "Sum",
    "Random",
    "ConFIG",
    "GradDrop",
    "TrimmedMean",
    "GradVac",
    "ExcessMTL",
    "PCD",
}


def _matrix(m: int = 4, n: int = 5, seed: int = 0) -> Tensor:
    """A seeded ``[m, n]`` matrix whose rows conflict: its first column has both signs."""
    matrix = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))
    matrix[:, 0] = torch.linspace(-3.0, 3.0, m) if m > 1 else 1.0
    return matrix


def _aggregate(case: AggregatorCase, matrix: Tensor) -> Tensor:
    # Random, GradDrop and PCGrad draw from torch's RNG: the same seed gives the same draw.
    torch.manual_seed(0)
    return case(matrix.shape[0])(matrix)


def _weighting(aggregator: Aggregator) -> Weighting:
    assert isinstance(aggregator, GramianWeightedAggregator)
    return aggregator.gramian_weighting


def test_every_aggregator_of_the_spec_is_tested() -> None:
    names = {class_name(case) for case in ALL_CASES}
    others = {"ConFIG", "GradDrop", "TrimmedMean", "NashMTL", "ExcessMTL", "MoCo"}
    assert names == GRAMIAN_WEIGHTED | others
    assert len(names) == 21


# --- calling convention and input validation -----------------------------------------------------


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_takes_the_matrix_positionally_only(case: AggregatorCase) -> None:
    with pytest.raises(TypeError):
        case(4)(matrix=_matrix())  # type: ignore[call-arg]


@pytest.mark.parametrize("case", params(WEIGHTED_CASES))
def test_weighting_takes_the_gramian_positionally_only(case: AggregatorCase) -> None:
    matrix = _matrix()
    with pytest.raises(TypeError):
        _weighting(case(4))(gramian=matrix @ matrix.T)  # type: ignore[call-arg]


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_rejects_non_tensors(case: AggregatorCase) -> None:
    with pytest.raises(TypeError, match="`matrix`"):
        case(4)(_matrix().tolist())  # type: ignore[arg-type]


@pytest.mark.parametrize("case", params(ALL_CASES))
@pytest.mark.parametrize("shape", [(5,), (4, 5, 1)])
def test_rejects_matrices_that_are_not_2d(case: AggregatorCase, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="`matrix`"):
        case(4)(torch.ones(shape))


@pytest.mark.parametrize("case", params(WEIGHTED_CASES))
def test_weighting_rejects_gramians_that_are_not_square(case: AggregatorCase) -> None:
    with pytest.raises(ValueError, match="`gramian`"):
        _weighting(case(4))(torch.ones(4, 3))


# --- structure: Gramian weighting, hooks, state_dict, repr/str ---------------------------------


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_is_gramian_weighted_exactly_when_the_spec_says_so(case: AggregatorCase) -> None:
    aggregator = case(4)
    assert isinstance(aggregator, GramianWeightedAggregator) == (
        class_name(case) in GRAMIAN_WEIGHTED
    )


@pytest.mark.parametrize("case", params(WEIGHTED_CASES))
def test_output_is_the_weighting_of_the_gramian_applied_to_the_rows(case: AggregatorCase) -> None:
    matrix = _matrix()
    aggregator = case(4)
    output = _aggregate(case, matrix)
    torch.manual_seed(0)
    weights = _weighting(aggregator)(matrix @ matrix.T)
    assert weights.shape == (4,)
    torch.testing.assert_close(output, weights @ matrix)


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_forward_hooks_fire_on_every_call(case: AggregatorCase) -> None:
    aggregator = case(4)
    outputs: list[Tensor] = []
    aggregator.register_forward_hook(lambda module, args, output: outputs.append(output))
    weights: list[Tensor] = []
    if isinstance(aggregator, GramianWeightedAggregator):
        aggregator.gramian_weighting.register_forward_hook(
            lambda module, args, output: weights.append(output)
        )
    for seed in range(3):
        aggregator(_matrix(seed=seed))
    assert len(outputs) == 3
    assert all(output.shape == (5,) for output in outputs)
    if isinstance(aggregator, GramianWeightedAggregator):
        assert len(weights) == 3
        assert all(weight.shape == (4,) for weight in weights)


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_state_dict_round_trip(case: AggregatorCase) -> None:
    matrix = _matrix()
    aggregator = case(4)
    expected = _aggregate(case, matrix)
    state = aggregator.state_dict()
    assert all(isinstance(value, Tensor) for value in state.values())
    restored = case(4)
    restored.load_state_dict(state)
    torch.manual_seed(0)
    torch.testing.assert_close(restored(matrix), expected)


def _constructor_parameters(aggregator: Aggregator) -> list[str]:
    signature = inspect.signature(type(aggregator).__init__)
    return [name for name in signature.parameters if name != "self"]


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_repr_shows_the_constructor_arguments(case: AggregatorCase) -> None:
    aggregator = case(4)
    text = repr(aggregator)
    name = type(aggregator).__name__
    assert text.startswith(f"{name}(") and text.endswith(")")
    for parameter in _constructor_parameters(aggregator):
        assert f"{parameter}=" in text


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_str_is_a_short_name(case: AggregatorCase) -> None:
    aggregator = case(4)
    name = type(aggregator).__name__
    assert str(aggregator).startswith(name)
    assert len(str(aggregator)) <= len(repr(aggregator))


@pytest.mark.parametrize(
    "aggregator_type",
    [case(4).__class__ for case in ALL_CASES if class_name(case) == case.name],
    ids=lambda t: t.__name__,
)
def test_str_of_a_default_aggregator_is_its_class_name(aggregator_type: type[Aggregator]) -> None:
    parameters = inspect.signature(aggregator_type.__init__).parameters.values()
    if any(p.default is inspect.Parameter.empty for p in parameters if p.name != "self"):
        pytest.skip("needs arguments")
    assert str(aggregator_type()) == aggregator_type.__name__


def test_str_of_constant_shows_its_weights() -> None:
    assert str(Constant(torch.tensor([1.0, 2.0]))) == "Constant([1., 2.])"


@pytest.mark.parametrize("case", params(WEIGHTED_CASES))
def test_weighting_repr_and_str(case: AggregatorCase) -> None:
    weighting = _weighting(case(4))
    name = type(weighting).__name__
    assert name.endswith("Weighting")
    assert repr(weighting).startswith(f"{name}(")
    assert str(weighting).startswith(name)


# --- differentiability -------------------------------------------------------------------------


@pytest.mark.parametrize("case", params(NON_DIFFERENTIABLE_CASES))
def test_non_differentiable_aggregators_raise_on_backward(case: AggregatorCase) -> None:
    matrix = _matrix().requires_grad_()
    output = _aggregate(case, matrix)
    assert torch.isfinite(output).all()
    with pytest.raises(NonDifferentiableError, match=class_name(case)):
        output.sum().backward()


@pytest.mark.parametrize("case", params(DIFFERENTIABLE_CASES))
def test_differentiable_aggregators_pass_gradcheck(case: AggregatorCase) -> None:
    matrix = _matrix().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda m: _aggregate(case, m), (matrix,))


@pytest.mark.parametrize(
    ("case", "expected_weights"),
    [
        (MEAN, torch.full((4,), 0.25)),
        (SUM, torch.ones(4)),
        (CONSTANT, torch.tensor([1.0, 2, 3, 4]) / 4),
    ],
    ids=["Mean", "Sum", "Constant"],
)
def test_gradient_of_fixed_weights_is_the_weights(
    case: AggregatorCase, expected_weights: Tensor
) -> None:
    matrix = _matrix().requires_grad_()
    direction = torch.randn(5, generator=torch.Generator().manual_seed(1))
    (_aggregate(case, matrix) @ direction).backward()
    assert matrix.grad is not None
    torch.testing.assert_close(matrix.grad, torch.outer(expected_weights, direction))


def test_gradient_of_mgda_matches_the_closed_form_min_norm_point() -> None:
    """For two rows the min-norm point of the segment is ``g₂ + γ (g₁ - g₂)`` with
    ``γ = clamp((g₂ - g₁)·g₂ / ‖g₁ - g₂‖², 0, 1)``; Frank–Wolfe reaches it in one exact step."""
    matrix = torch.tensor([[2.0, 1.0, 0.0], [-1.0, 1.5, 0.5]], dtype=torch.float64)
    direction = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)

    def closed_form(rows: Tensor) -> Tensor:
        difference = rows[0] - rows[1]
        gamma = ((-difference) @ rows[1] / (difference @ difference)).clamp(0.0, 1.0)
        return rows[1] + gamma * difference

    aggregator = MGDA(2)
    rows = matrix.clone().requires_grad_()
    (aggregator(rows) @ direction).backward()
    reference = matrix.clone().requires_grad_()
    (closed_form(reference) @ direction).backward()

    torch.testing.assert_close(aggregator(matrix), closed_form(matrix))
    assert rows.grad is not None and reference.grad is not None
    torch.testing.assert_close(rows.grad, reference.grad)


# --- dtypes and devices ------------------------------------------------------------------------


@pytest.mark.parametrize("case", params(ALL_CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(case: AggregatorCase, dtype: torch.dtype) -> None:
    matrix = _matrix().to(dtype)
    output = _aggregate(case, matrix)
    assert output.dtype == dtype
    assert output.device == matrix.device
    expected = _aggregate(case, matrix.float()).to(dtype)
    torch.testing.assert_close(output, expected, rtol=0.0, atol=0.0)


#: cvxpy solves to its own tolerance, not to float32 precision.
FLOAT64_RTOL = {"CAGrad": 1e-3, "NashMTL": 1e-3}


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_float64_is_close_to_float32(case: AggregatorCase) -> None:
    matrix = _matrix()
    output = _aggregate(case, matrix.double())
    assert output.dtype == torch.float64
    expected = _aggregate(case, matrix)
    if class_name(case) == "GradDrop":
        # Its uniform draws depend on the dtype, so only compare when nothing is dropped.
        assert torch.isfinite(output).all()
        output = GradDrop(leak=torch.ones(4))(matrix.double())
        expected = matrix.sum(dim=0)
    rtol = FLOAT64_RTOL.get(class_name(case), 1e-4)
    torch.testing.assert_close(output.float(), expected, rtol=rtol, atol=rtol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", params(ALL_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_output_is_on_the_input_device(case: AggregatorCase, dtype: torch.dtype) -> None:
    matrix = _matrix().to(dtype)
    output = case(4).to("cuda")(matrix.cuda())
    assert output.device == matrix.cuda().device
    assert output.dtype == dtype
    if class_name(case) not in {"Random", "GradDrop", "PCGrad"}:  # different RNG streams
        expected = _aggregate(case, matrix)
        torch.testing.assert_close(output.cpu(), expected, rtol=1e-3, atol=1e-3)


# --- edge cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", params([case for case in ALL_CASES if case.min_m == 1]))
def test_single_row(case: AggregatorCase) -> None:
    row = torch.tensor([[3.0, -4.0, 1.0]])
    output = _aggregate(case, row)
    assert output.shape == (3,)
    assert torch.isfinite(output).all()
    if class_name(case) in IDENTITY_ON_ONE_ROW:
        torch.testing.assert_close(output, row[0])
    else:
        # Rescaled, never turned: a non-negative multiple of the row.
        assert output @ row[0] >= 0.0
        torch.testing.assert_close(output @ row[0] * row[0] / (row[0] @ row[0]), output)


# Opposite signs in one dimension leave no bargaining solution: NashMTL warns, keeps 1/‖·‖ weights.
@pytest.mark.filterwarnings("ignore:NashMTL:RuntimeWarning")
@pytest.mark.parametrize("case", params(ALL_CASES))
def test_single_column(case: AggregatorCase) -> None:
    matrix = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    output = _aggregate(case, matrix)
    assert output.shape == (1,)
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("case", params(ALL_CASES))
@pytest.mark.parametrize("shape", [(4, 5), (4, 1), (1, 5)])
def test_zero_matrix_gives_zeros(case: AggregatorCase, shape: tuple[int, int]) -> None:
    m, n = shape
    if m < case.min_m:
        pytest.skip(f"{case.name} needs at least {case.min_m} rows")
    output = _aggregate(case, torch.zeros(m, n))
    assert torch.equal(output, torch.zeros(n))


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_matrix_without_columns_gives_an_empty_vector(case: AggregatorCase) -> None:
    # E.g. the Jacobian of a parameter with no elements.
    output = _aggregate(case, torch.zeros(max(4, case.min_m), 0))
    assert output.shape == (0,)


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_matrix_without_rows_gives_zeros_or_a_value_error(case: AggregatorCase) -> None:
    # E.g. the Jacobian of an empty tensor of losses: never a crash of another kind.
    aggregator = case(case.min_m)
    try:
        output = aggregator(torch.zeros(0, 3))
    except ValueError as error:
        assert "`" in str(error)  # names the offending parameter
    else:
        assert torch.equal(output, torch.zeros(3))


# --- aggregate --------------------------------------------------------------------


@pytest.mark.parametrize("case", params(WEIGHTED_CASES))
def test_aggregate_returns_the_weights(case: AggregatorCase) -> None:
    matrix = _matrix()
    aggregator = case(4)
    torch.manual_seed(0)
    output, weights, gramian = aggregator.aggregate(matrix)
    assert weights is not None and gramian is not None
    assert not weights.requires_grad
    torch.testing.assert_close(gramian, matrix @ matrix.T)
    torch.manual_seed(0)
    torch.testing.assert_close(weights, _weighting(case(4))(matrix @ matrix.T))
    torch.testing.assert_close(output, _aggregate(case, matrix))
    torch.testing.assert_close(output, weights @ matrix)


@pytest.mark.parametrize("case", params(UNWEIGHTED_CASES))
def test_aggregate_returns_none_for_unweighted(case: AggregatorCase) -> None:
    matrix = _matrix()
    torch.manual_seed(0)
    output, weights, gramian = case(4).aggregate(matrix)
    assert weights is None and gramian is None
    torch.testing.assert_close(output, _aggregate(case, matrix))


@pytest.mark.parametrize("case", params(ALL_CASES))
def test_aggregate_fires_user_hooks_and_cleans_up(case: AggregatorCase) -> None:
    aggregator = case(4)
    calls: list[str] = []
    aggregator.register_forward_hook(lambda module, args, output: calls.append("aggregator"))
    if isinstance(aggregator, GramianWeightedAggregator):
        aggregator.gramian_weighting.register_forward_hook(
            lambda module, args, output: calls.append("weighting")
        )
    hooks_before = (
        len(aggregator.gramian_weighting._forward_hooks)
        if isinstance(aggregator, GramianWeightedAggregator)
        else 0
    )

    aggregator.aggregate(_matrix())
    aggregator.aggregate(_matrix(seed=1))

    if isinstance(aggregator, GramianWeightedAggregator):
        assert calls == ["weighting", "aggregator"] * 2
        assert len(aggregator.gramian_weighting._forward_hooks) == hooks_before
    else:
        assert calls == ["aggregator"] * 2


def test_aggregate_does_not_swallow_errors() -> None:
    aggregator = CONSTANT(3)
    with pytest.raises(ValueError, match="`weights`"):
        aggregator.aggregate(_matrix())
    assert len(_weighting(aggregator)._forward_hooks) == 0


def test_slow_cases_are_cvxpy_based() -> None:
    assert {case.name for case in ALL_CASES if case.slow} == {CAGRAD.name, NASH_MTL.name}
