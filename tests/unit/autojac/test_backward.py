"""Tests of jdoptim.autojac.backward: the .jac fields against Jacobians built row by row."""

from __future__ import annotations

import pytest
import torch
from _autojac_reference import SharedSubmodule, cnn, explicit_jacobians, mlp
from torch import Tensor, nn

from jdoptim.autojac import backward
from jdoptim.autojac._graph import leaves_in_order_of_first_use

CHUNK_SIZES = [None, 1, 3]


def assert_jacs(tensors: list[Tensor], expected: list[Tensor]) -> None:
    for tensor, jacobian in zip(tensors, expected, strict=True):
        torch.testing.assert_close(tensor.jac, jacobian, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parallel_chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize(
    ("make_model", "input_shape"),
    [(mlp, (6, 5)), (cnn, (2, 2, 6, 6)), (SharedSubmodule, (3, 4))],
)
def test_default_inputs_receive_the_jacobian(make_model, input_shape, parallel_chunk_size) -> None:
    model = make_model().double()
    used = [p for name, p in model.named_parameters() if name != "unused"]
    output = model(torch.randn(input_shape, dtype=torch.float64))
    expected = explicit_jacobians([output], used)

    backward(output, parallel_chunk_size=parallel_chunk_size)

    assert_jacs(used, expected)
    for param in model.parameters():
        assert param.grad is None
    if isinstance(model, SharedSubmodule):
        assert not hasattr(model.unused, "jac")


@pytest.mark.parametrize("make_model", [mlp, cnn])
def test_default_inputs_in_order_of_first_use(make_model) -> None:
    model = make_model()
    x = torch.randn(2, 5) if make_model is mlp else torch.randn(2, 2, 6, 6)

    inputs, _ = leaves_in_order_of_first_use([model(x)])

    assert [id(t) for t in inputs] == [id(p) for p in model.parameters()]


def test_explicit_inputs_include_unused_parameter_with_zero_rows() -> None:
    model = SharedSubmodule().double()
    params = list(model.parameters())
    output = model(torch.randn(3, 4, dtype=torch.float64))
    expected = explicit_jacobians([output], params)

    backward(output, inputs=params)

    assert_jacs(params, expected)
    assert torch.equal(model.unused.jac, torch.zeros(6, 3, dtype=torch.float64))


def test_explicit_inputs_restrict_the_fields() -> None:
    model = mlp().double()
    output = model(torch.randn(2, 5, dtype=torch.float64))
    first_layer = list(model[0].parameters())
    expected = explicit_jacobians([output], first_layer)

    backward(output, inputs=model[0].parameters())

    assert_jacs(first_layer, expected)
    assert not hasattr(model[2].weight, "jac")


@pytest.mark.parametrize("parallel_chunk_size", CHUNK_SIZES)
def test_several_tensors_of_several_shapes(parallel_chunk_size) -> None:
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def losses() -> list[Tensor]:
        return [(x @ w).sin(), (x * x).sum(), x.exp() * w]

    expected = explicit_jacobians(losses(), [x, w])
    backward(losses(), parallel_chunk_size=parallel_chunk_size)

    assert_jacs([x, w], expected)


@pytest.mark.parametrize("parallel_chunk_size", CHUNK_SIZES)
def test_second_call_accumulates(parallel_chunk_size) -> None:
    model = mlp().double()
    params = list(model.parameters())
    inputs = torch.randn(2, 5, dtype=torch.float64)
    expected = explicit_jacobians([model(inputs)], params)

    backward(model(inputs), parallel_chunk_size=parallel_chunk_size)
    backward(model(inputs), parallel_chunk_size=parallel_chunk_size)

    assert_jacs(params, [2 * e for e in expected])


def test_accumulation_does_not_modify_jac_tensors() -> None:
    x = torch.zeros(3, requires_grad=True)
    jac_tensors = torch.ones(2, 3)

    backward(x * 1.0, jac_tensors=jac_tensors)
    backward(x * 1.0, jac_tensors=jac_tensors)

    assert torch.equal(jac_tensors, torch.ones(2, 3))
    assert torch.equal(x.jac, torch.full((2, 3), 2.0))


@pytest.mark.parametrize("parallel_chunk_size", CHUNK_SIZES)
def test_jac_tensors_pre_multiply(parallel_chunk_size) -> None:
    model = cnn().double()
    params = list(model.parameters())
    output = model(torch.randn(3, 2, 6, 6, dtype=torch.float64))
    jac_tensors = torch.randn(4, 3, 2, dtype=torch.float64)
    full = explicit_jacobians([output], params)

    backward(output, jac_tensors=jac_tensors, parallel_chunk_size=parallel_chunk_size)

    expected = [torch.tensordot(jac_tensors.reshape(4, -1), f, dims=1) for f in full]
    assert_jacs(params, expected)


def test_non_leaf_retaining_grad_as_input() -> None:
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    hidden = x * 2
    hidden.retain_grad()
    output = hidden.sin()

    backward(output, inputs=[hidden])

    torch.testing.assert_close(hidden.jac, torch.diag(hidden.detach().cos()))
    assert not hasattr(x, "jac")


def test_retained_grad_of_intermediate_with_chunk_size_one_gets_summed_rows() -> None:
    # Documented limitation: torch calls retain-grad hooks on every backward pass.
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    hidden = x * 2
    hidden.retain_grad()
    output = hidden.sin()

    backward(output, parallel_chunk_size=1)

    torch.testing.assert_close(hidden.grad, hidden.detach().cos())
    torch.testing.assert_close(x.jac, torch.diag(2 * hidden.detach().cos()))


def test_rnn_with_chunk_size_one() -> None:
    rnn = nn.RNN(3, 4).double()
    params = list(rnn.parameters())
    output, _ = rnn(torch.randn(5, 2, 3, dtype=torch.float64))
    expected = explicit_jacobians([output[-1]], params)

    backward(output[-1], parallel_chunk_size=1)

    assert_jacs(params, expected)


def test_graph_is_freed_unless_retained() -> None:
    x = torch.randn(4, requires_grad=True)
    y = x.exp()

    backward(y, retain_graph=True, parallel_chunk_size=2)
    backward(y, parallel_chunk_size=2)

    torch.testing.assert_close(x.jac, 2 * torch.diag(x.detach().exp()))
    with pytest.raises(RuntimeError, match="second time"):
        backward(y)


def test_two_runs_give_bit_identical_jacobians() -> None:
    def run() -> list[Tensor]:
        torch.manual_seed(7)
        model = cnn()
        backward(model(torch.randn(3, 2, 6, 6)), parallel_chunk_size=2)
        return [p.jac for p in model.parameters()]

    for first, second in zip(run(), run(), strict=True):
        assert torch.equal(first, second)


def test_error_empty_tensors() -> None:
    with pytest.raises(ValueError, match="`tensors`"):
        backward([])


def test_error_tensor_without_grad_fn() -> None:
    with pytest.raises(ValueError, match="`tensors`"):
        backward(torch.ones(3))


def test_error_input_not_leaf_without_retain_grad() -> None:
    x = torch.randn(3, requires_grad=True)
    hidden = x * 2
    with pytest.raises(ValueError, match="`inputs`"):
        backward(hidden.sum(), inputs=[hidden])


def test_error_input_without_grad() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`inputs`"):
        backward(x.sum(), inputs=[x, torch.ones(2)])


def test_error_empty_inputs() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`inputs`"):
        backward(x.sum(), inputs=[])


def test_error_duplicate_inputs() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`inputs`"):
        backward(x.sum(), inputs=[x, x])


@pytest.mark.parametrize(
    "jac_tensors",
    [
        [torch.ones(2, 3), torch.ones(2)],
        [torch.ones(3)],
        [torch.ones(2, 2)],
    ],
)
def test_error_jac_tensors_of_wrong_shape(jac_tensors) -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`jac_tensors`"):
        backward([x * 2], jac_tensors=jac_tensors)


def test_error_existing_jac_with_other_number_of_rows_is_raised_before_computing() -> None:
    x = torch.randn(3, requires_grad=True)
    backward(torch.stack([x.sum(), x.prod()]))
    y = x.exp()

    with pytest.raises(ValueError, match=r"`inputs`.*jac"):
        backward(y)

    del x.jac
    backward(y)  # the failed call did not consume the graph
    torch.testing.assert_close(x.jac, torch.diag(x.detach().exp()))


def test_error_non_positive_chunk_size() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`parallel_chunk_size`"):
        backward(x * 2, parallel_chunk_size=0)
