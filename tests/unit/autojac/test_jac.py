"""Tests of jdoptim.autojac.jac against Jacobians built one row at a time."""

from __future__ import annotations

import pytest
import torch
from _autojac_reference import SharedSubmodule, cnn, explicit_jacobians, mlp
from torch import Tensor, nn

from jdoptim.autojac import jac

CHUNK_SIZES = [None, 1, 3]


def assert_all_close(actual: tuple[Tensor, ...] | list[Tensor], expected: list[Tensor]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parallel_chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize(
    ("make_model", "input_shape"),
    [(mlp, (6, 5)), (cnn, (2, 2, 6, 6)), (SharedSubmodule, (3, 4))],
)
def test_matches_explicit_jacobian(make_model, input_shape, parallel_chunk_size) -> None:
    model = make_model().double()
    params = list(model.parameters())
    output = model(torch.randn(input_shape, dtype=torch.float64))

    jacobians = jac(output, params, retain_graph=True, parallel_chunk_size=parallel_chunk_size)

    assert_all_close(jacobians, explicit_jacobians([output], params))
    for param, jacobian in zip(params, jacobians):
        assert jacobian.shape == (output.numel(), *param.shape)
        assert param.grad is None
        assert not hasattr(param, "jac")


def test_unused_input_gets_zero_rows() -> None:
    model = SharedSubmodule().double()
    output = model(torch.randn(3, 4, dtype=torch.float64))

    (jacobian,) = jac(output, model.unused)

    assert torch.equal(jacobian, torch.zeros(6, 3, dtype=torch.float64))


@pytest.mark.parametrize("parallel_chunk_size", CHUNK_SIZES)
def test_several_outputs_of_several_shapes(parallel_chunk_size) -> None:
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    outputs = [(x @ w).sin(), (x * x).sum(), x.exp() * w]

    jacobians = jac(outputs, [x, w], retain_graph=True, parallel_chunk_size=parallel_chunk_size)

    assert jacobians[0].shape == (3 + 1 + 6, 3, 2)
    assert_all_close(jacobians, explicit_jacobians(outputs, [x, w]))


@pytest.mark.parametrize("parallel_chunk_size", CHUNK_SIZES)
def test_jac_outputs_pre_multiplies(parallel_chunk_size) -> None:
    model = mlp().double()
    params = list(model.parameters())
    hidden = model[:2](torch.randn(4, 5, dtype=torch.float64))
    output = model[2:](hidden)
    jac_outputs = torch.randn(5, 4, 3, dtype=torch.float64)

    jacobians = jac(
        output,
        params,
        jac_outputs=jac_outputs,
        retain_graph=True,
        parallel_chunk_size=parallel_chunk_size,
    )

    expected = explicit_jacobians([output], params)
    for jacobian, full in zip(jacobians, expected):
        torch.testing.assert_close(
            jacobian,
            torch.tensordot(jac_outputs.reshape(5, -1), full, dims=1),
            rtol=1e-12,
            atol=1e-12,
        )


def test_chain_rule_through_intermediate_tensor() -> None:
    model = mlp().double()
    params = list(model[:2].parameters())
    hidden = model[:2](torch.randn(4, 5, dtype=torch.float64))
    output = model[2:](hidden)

    (output_wrt_hidden,) = jac(output, hidden, retain_graph=True)
    chained = jac(hidden, params, jac_outputs=output_wrt_hidden, retain_graph=True)

    assert_all_close(chained, explicit_jacobians([output], params))


def test_leaf_output_gives_identity() -> None:
    x = torch.randn(2, 2, requires_grad=True)

    (jacobian,) = jac(x, x)

    assert torch.equal(jacobian, torch.eye(4).reshape(4, 2, 2))


def test_results_do_not_alias_each_other_or_jac_outputs() -> None:
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    jac_outputs = torch.randn(2, 3)

    jacobian_a, jacobian_b = jac(a + b, [a, b], jac_outputs=jac_outputs)
    jacobian_a.add_(1.0)

    assert torch.equal(jacobian_b, jac_outputs)
    assert torch.equal(jacobian_a, jac_outputs + 1.0)


def test_expanded_gradients_become_contiguous() -> None:
    x = torch.randn(2, 3, requires_grad=True)

    (jacobian,) = jac(torch.stack([x.sum(), 2 * x.sum()]), x)

    assert jacobian.is_contiguous()
    assert torch.equal(jacobian, torch.stack([torch.ones(2, 3), torch.full((2, 3), 2.0)]))


@pytest.mark.parametrize("parallel_chunk_size", CHUNK_SIZES)
def test_graph_is_freed_after_last_row_only(parallel_chunk_size) -> None:
    x = torch.randn(5, requires_grad=True)
    y = x.exp()

    jac(y, x, parallel_chunk_size=parallel_chunk_size)

    with pytest.raises(RuntimeError, match="second time"):
        y.sum().backward()


def test_retain_graph_keeps_graph() -> None:
    x = torch.randn(5, requires_grad=True)
    y = x.exp()

    first = jac(y, x, retain_graph=True)
    second = jac(y, x)

    assert torch.equal(first[0], second[0])


class DoubleWithoutVmap(torch.autograd.Function):
    """A custom function computed outside torch (in numpy): vmap cannot run its backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.from_numpy(2 * x.detach().numpy())

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return torch.from_numpy(2 * grad.numpy())


def test_custom_function_without_vmap_rule_needs_chunk_size_one() -> None:
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = DoubleWithoutVmap.apply(x).sin()

    with pytest.raises(RuntimeError, match="Batching rule not implemented"):
        jac(y, x, retain_graph=True)
    (jacobian,) = jac(y, x, parallel_chunk_size=1)

    assert_all_close([jacobian], [torch.diag(2 * (2 * x).cos()).detach()])


def test_rnn_with_chunk_size_one() -> None:
    rnn = nn.RNN(3, 4, batch_first=True).double()
    params = list(rnn.parameters())
    output, _ = rnn(torch.randn(2, 5, 3, dtype=torch.float64))
    last = output[:, -1]

    jacobians = jac(last, params, retain_graph=True, parallel_chunk_size=1)

    assert_all_close(jacobians, explicit_jacobians([last], params))


def test_two_runs_are_bit_identical() -> None:
    def run() -> tuple[Tensor, ...]:
        torch.manual_seed(3)
        model = cnn()
        return jac(model(torch.randn(3, 2, 6, 6)), list(model.parameters()))

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


def test_empty_outputs_give_zero_rows() -> None:
    x = torch.randn(3, requires_grad=True)

    (jacobian,) = jac(x[:0] * 2, x)

    assert jacobian.shape == (0, 3)


def test_float32_keeps_dtype() -> None:
    x = torch.randn(3, requires_grad=True)

    (jacobian,) = jac(x * x, x)

    assert jacobian.dtype == torch.float32
    torch.testing.assert_close(jacobian, torch.diag(2 * x.detach()))


def test_error_empty_outputs() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`outputs`"):
        jac([], x)


def test_error_output_without_grad_fn() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"`outputs`.*require grad"):
        jac([x * 2, torch.ones(2)], x)


def test_error_outputs_not_tensors() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match="`outputs`"):
        jac([x * 2, 3.0], x)  # type: ignore[list-item]


def test_error_empty_inputs() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`inputs`"):
        jac(x * 2, [])


def test_error_input_without_grad() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`inputs`"):
        jac(x * 2, [x, torch.ones(3)])


@pytest.mark.parametrize(
    "jac_outputs",
    [
        [torch.ones(2, 3), torch.ones(2)],  # wrong length
        [torch.ones(3)],  # no leading dimension
        [torch.ones(2, 4)],  # wrong trailing shape
    ],
)
def test_error_jac_outputs_of_wrong_shape(jac_outputs) -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`jac_outputs`"):
        jac([x * 2], x, jac_outputs=jac_outputs)


def test_error_jac_outputs_with_different_rows() -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"`jac_outputs`.*rows"):
        jac([x * 2, x.sum()], x, jac_outputs=[torch.ones(2, 3), torch.ones(3)])


@pytest.mark.parametrize("parallel_chunk_size", [0, -2])
def test_error_non_positive_chunk_size(parallel_chunk_size) -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="`parallel_chunk_size`"):
        jac(x * 2, x, parallel_chunk_size=parallel_chunk_size)


@pytest.mark.parametrize("parallel_chunk_size", [2.0, True])
def test_error_chunk_size_not_int(parallel_chunk_size) -> None:
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match="`parallel_chunk_size`"):
        jac(x * 2, x, parallel_chunk_size=parallel_chunk_size)
