"""Behaviour shared by the stateful and loss-aware methods: saving and resuming their state,
reset, non-finite input, differentiability, one row and all-zero matrices."""

from __future__ import annotations

import io

import pytest
import torch
from _methods import CASES, STATEFUL_CASES, MethodCase, jacobians, losses, params
from torch import Tensor, nn

from jdoptim.aggregation import (
    PCD,
    CRMOGMWeighting,
    ExcessMTL,
    FairGrad,
    GradVac,
    MGDAWeighting,
    NonDifferentiableError,
)


def _run(case: MethodCase, module: nn.Module, start: int = 0, stop: int = 5) -> list[Tensor]:
    """Outputs of calls ``start``…``stop - 1`` of the seeded sequence, each after its own seed."""
    outputs = []
    for index, (matrix, loss) in list(enumerate(zip(jacobians(), losses())))[start:stop]:
        torch.manual_seed(100 + index)
        outputs.append(case.call(module, matrix, loss))
    return outputs


def _round_trip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Tensor] = torch.load(buffer, weights_only=True)
    return loaded


def _assert_same(actual: list[Tensor], expected: list[Tensor]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e), (a, e)


@pytest.mark.parametrize("case", params(CASES))
def test_outputs_are_finite_and_shaped(case: MethodCase) -> None:
    outputs = _run(case, case.make())
    for output in outputs:
        assert torch.isfinite(output).all()
        assert output.dtype == torch.float64
        if case.aggregates:
            assert output.shape == (4,)


@pytest.mark.parametrize("case", params(STATEFUL_CASES))
def test_the_state_changes_the_outputs(case: MethodCase) -> None:
    module = case.make()
    first = _run(case, module, 0, 1)[0]
    _run(case, module, 1, 3)
    again = _run(case, module, 0, 1)[0]
    assert not torch.equal(first, again)


@pytest.mark.parametrize("case", params(STATEFUL_CASES))
def test_state_dict_resumes_bit_for_bit_in_a_fresh_instance(case: MethodCase) -> None:
    expected = _run(case, case.make())
    module = case.make()
    _run(case, module, 0, 2)
    restored = case.make()
    restored.load_state_dict(_round_trip(module.state_dict()))
    _assert_same(_run(case, restored, 2, 5), expected[2:])


@pytest.mark.parametrize("case", params(STATEFUL_CASES))
def test_state_dict_keys_exist_from_construction(case: MethodCase) -> None:
    module = case.make()
    before = set(module.state_dict())
    assert before
    _run(case, module)
    assert set(module.state_dict()) == before


@pytest.mark.parametrize("case", params(STATEFUL_CASES))
def test_loading_the_initial_state_rolls_back(case: MethodCase) -> None:
    expected = _run(case, case.make())
    initial = _round_trip(case.make().state_dict())
    module = case.make()
    _run(case, module, 0, 3)
    module.load_state_dict(initial)
    _assert_same(_run(case, module), expected)


@pytest.mark.parametrize("case", params(STATEFUL_CASES))
def test_reset_returns_to_the_initial_state(case: MethodCase) -> None:
    expected = _run(case, case.make())
    module = case.make()
    _run(case, module, 0, 3)
    module.reset()  # type: ignore[operator]
    _assert_same(_run(case, module), expected)


@pytest.mark.parametrize("case", params(CASES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_gives_nan_and_leaves_state_and_rng(case: MethodCase, bad: float) -> None:
    expected = _run(case, case.make())
    module = case.make()
    _run(case, module, 0, 2)
    state = {key: value.clone() for key, value in module.state_dict().items()}
    poisoned = jacobians()[2].clone()
    poisoned[1, 2] = bad
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    output = case.call(module, poisoned, losses()[2])
    assert torch.isnan(output).all()
    assert torch.equal(torch.get_rng_state(), rng)
    after = module.state_dict()
    assert all(torch.equal(after[key], value) for key, value in state.items())
    _assert_same(_run(case, module, 2, 5), expected[2:])


@pytest.mark.parametrize("case", params([case for case in CASES if "losses" in case.call.__name__]))
def test_non_finite_losses_give_nan_and_leave_the_state(case: MethodCase) -> None:
    module = case.make()
    _run(case, module, 0, 2)
    state = {key: value.clone() for key, value in module.state_dict().items()}
    bad_losses = losses()[2].clone()
    bad_losses[0] = float("nan")
    output = case.call(module, jacobians()[2], bad_losses)
    assert torch.isnan(output).all()
    after = module.state_dict()
    assert all(torch.equal(after[key], value) for key, value in state.items())


@pytest.mark.parametrize("case", params([case for case in CASES if not case.differentiable]))
def test_backward_raises_non_differentiable_error(case: MethodCase) -> None:
    matrix = jacobians()[0].requires_grad_()
    output = case.call(case.make(), matrix, losses()[0])
    assert torch.isfinite(output).all()
    with pytest.raises(NonDifferentiableError):
        output.sum().backward()


def test_crmogm_gradient_flows_through_the_current_weights_only() -> None:
    alpha = 0.5
    inner = MGDAWeighting()
    weighting = CRMOGMWeighting(MGDAWeighting(), alpha=alpha)
    weighting(jacobians()[0] @ jacobians()[0].T)
    direction = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    matrix = jacobians()[1].requires_grad_()
    (weighting(matrix @ matrix.T) @ direction).backward()
    reference = jacobians()[1].requires_grad_()
    (inner(reference @ reference.T) @ direction).backward()
    assert matrix.grad is not None and reference.grad is not None
    torch.testing.assert_close(matrix.grad, (1 - alpha) * reference.grad)


@pytest.mark.parametrize("case", params(CASES))
def test_single_row(case: MethodCase) -> None:
    module = case.make()
    for matrix in jacobians(count=3, m=1):
        output = case.call(module, matrix, losses(m=1)[0])
        assert torch.isfinite(output).all()
        if case.aggregates and case.name not in {"DBMTL", "MoCo"}:
            # A non-negative multiple of the row (DBMTL and MoCo also carry past rows).
            row = matrix[0]
            assert output @ row >= 0
            torch.testing.assert_close(output, (output @ row) / (row @ row) * row)


@pytest.mark.parametrize("case", params(CASES))
def test_zero_matrix(case: MethodCase) -> None:
    module = case.make()
    for _ in range(3):
        output = case.call(module, torch.zeros(3, 4, dtype=torch.float64), losses()[0])
        assert torch.isfinite(output).all()
        if case.aggregates:
            assert torch.equal(output, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("case", params(CASES))
def test_float32_input_gives_float32_output(case: MethodCase) -> None:
    module = case.make()
    for matrix, loss in zip(jacobians(3), losses(3)):
        output = case.call(module, matrix.float(), loss.float())
        assert output.dtype == torch.float32
        assert torch.isfinite(output).all()


@pytest.mark.parametrize("case", params(STATEFUL_CASES))
def test_a_change_of_dtype_keeps_the_state(case: MethodCase) -> None:
    module = case.make()
    _run(case, module, 0, 2)
    reference = case.make()
    _run(case, reference, 0, 2)
    matrix, loss = jacobians()[2], losses()[2]
    torch.manual_seed(0)
    converted = case.call(module, matrix.float(), loss.float())
    torch.manual_seed(0)
    expected = case.call(reference, matrix, loss)
    torch.testing.assert_close(converted.double(), expected, rtol=1e-4, atol=1e-5)
    fresh = case.make()
    torch.manual_seed(0)
    assert not torch.allclose(case.call(fresh, matrix, loss), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "case", params([case for case in STATEFUL_CASES if not case.name.startswith("CRMOGM")])
)
def test_a_new_number_of_objectives_restarts_the_state(case: MethodCase) -> None:
    module = case.make()
    _run(case, module, 0, 3)
    matrix, loss = jacobians(1, m=2, seed=3)[0], losses(1, m=2)[0]
    torch.manual_seed(0)
    output = case.call(module, matrix, loss)
    torch.manual_seed(0)
    assert torch.equal(output, case.call(case.make(), matrix, loss))


@pytest.mark.parametrize(
    "case", params([case for case in STATEFUL_CASES if case.name.startswith("CRMOGM")])
)
def test_crmogm_refuses_a_new_number_of_objectives_until_reset(case: MethodCase) -> None:
    module = case.make()
    _run(case, module, 0, 2)
    matrix, loss = jacobians(1, m=2, seed=3)[0], losses(1, m=2)[0]
    with pytest.raises(ValueError, match=r"3 weights.*m = 2.*reset\(\)"):
        case.call(module, matrix, loss)
    module.reset()  # type: ignore[operator]
    assert torch.equal(case.call(module, matrix, loss), case.call(case.make(), matrix, loss))


@pytest.mark.parametrize("case", params(CASES))
def test_no_objectives_give_an_empty_result_and_no_state(case: MethodCase) -> None:
    module = case.make()
    state = {key: value.clone() for key, value in module.state_dict().items()}
    output = case.call(module, torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0))
    assert output.numel() == 0 or torch.equal(output, torch.zeros(4, dtype=torch.float64))
    after = module.state_dict()
    assert all(torch.equal(after[key], value) for key, value in state.items())


@pytest.mark.parametrize(
    ("aggregator", "name", "value", "bad"),
    [
        (FairGrad(1.0), "alpha", 2.0, -1.0),
        (GradVac(), "beta", 0.1, 2.0),
        (PCD(), "tau", 0.3, 1.5),
        (ExcessMTL(), "n_warmup_steps", 3, -1),
    ],
    ids=["FairGrad", "GradVac", "PCD", "ExcessMTL"],
)
def test_aggregator_arguments_are_settable_attributes_of_the_weighting(
    aggregator: nn.Module, name: str, value: object, bad: object
) -> None:
    setattr(aggregator, name, value)
    assert getattr(aggregator, name) == value
    assert getattr(aggregator.weighting, name) == value
    with pytest.raises(ValueError, match=f"`{name}` must"):
        setattr(aggregator, name, bad)
    assert getattr(aggregator, name) == value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", params(CASES))
def test_a_move_to_cuda_keeps_the_state(case: MethodCase) -> None:
    expected = _run(case, case.make())
    module = case.make()
    _run(case, module, 0, 2)
    module.to("cuda")
    for index in range(2, 5):
        torch.manual_seed(100 + index)  # GradVac draws from the CPU generator on any device
        output = case.call(module, jacobians()[index].cuda(), losses()[index].cuda())
        assert output.device.type == "cuda"
        torch.testing.assert_close(output.cpu(), expected[index], rtol=1e-6, atol=1e-9)
