"""Tests of the automatic chunk size and of Jacobians through models compiled by torch.compile."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch._dynamo
import torch._functorch.config
import torch._inductor.config
from _autojac_reference import cnn, mlp
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad
from jdoptim.autojac import backward, jac, mtl_backward
from jdoptim.autojac._chunk_size import choose_chunk_size, survey_graph

CPU = torch.device("cpu")


@contextmanager
def fresh_compilation() -> Iterator[None]:
    """Compiles from scratch: no cache from an earlier test or run decides how the backward of a
    compiled region is built."""
    torch._dynamo.reset()
    with (
        torch._functorch.config.patch(enable_autograd_cache=False),
        torch._inductor.config.patch(fx_graph_cache=False),
    ):
        yield
    torch._dynamo.reset()


def compiled_output(backend: str) -> tuple[nn.Module, Tensor]:
    model = mlp()
    return model, torch.compile(model, backend=backend)(torch.randn(6, 5))


# The automatic choice.


@pytest.mark.parametrize(("make_model", "input_shape"), [(mlp, (6, 5)), (cnn, (2, 2, 6, 6))])
def test_survey_finds_convolutions(make_model, input_shape) -> None:
    survey = survey_graph([make_model()(torch.randn(input_shape))])
    assert survey.convolution == (make_model is cnn)
    assert survey.compiled == []
    assert not survey.unvectorisable


def test_auto_is_one_for_convolutions_on_the_cpu_and_all_rows_otherwise() -> None:
    conv = survey_graph([cnn()(torch.randn(2, 2, 6, 6))])
    dense = survey_graph([mlp()(torch.randn(6, 5))])
    assert choose_chunk_size("auto", conv, 7, CPU) == 1
    assert choose_chunk_size("auto", conv, 7, torch.device("cuda")) == 7
    assert choose_chunk_size("auto", dense, 7, CPU) == 7


@pytest.mark.parametrize(("requested", "expected"), [(None, 7), (1, 1), (3, 3), (50, 7)])
def test_explicit_chunk_sizes_are_kept(requested, expected) -> None:
    conv = survey_graph([cnn()(torch.randn(2, 2, 6, 6))])
    assert choose_chunk_size(requested, conv, 7, CPU) == expected


def test_auto_on_a_convolution_never_vectorises() -> None:
    model = cnn()
    output = model(torch.randn(2, 2, 6, 6))
    calls: list[bool] = []
    original = torch.autograd.grad

    def spy(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.autograd, "grad", spy)
        automatic = jac(output, list(model.parameters()), retain_graph=True)
    assert calls == [False] * output.numel()
    expected = jac(output, list(model.parameters()), parallel_chunk_size=None)
    for a, e in zip(automatic, expected, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("bad", ["Auto", "fast", 1.0, True])
def test_other_values_are_refused(bad) -> None:
    model = mlp()
    output = model(torch.randn(6, 5))
    with pytest.raises(TypeError, match="'auto', None or a positive int"):
        jac(output, list(model.parameters()), parallel_chunk_size=bad)


# Compiled models, against the same model run eagerly.


def eager_and_compiled(backend: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    model = mlp()
    twin = copy.deepcopy(model)
    return model, twin, torch.compile(twin, backend=backend)


BACKENDS = ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_jac_equals_eager(backend) -> None:
    model, twin, compiled = eager_and_compiled(backend)
    x = torch.randn(6, 5)
    with fresh_compilation():
        for _ in range(2):  # the second call reuses the compiled backward
            actual = jac(compiled(x), list(twin.parameters()))
            expected = jac(model(x), list(model.parameters()), parallel_chunk_size=1)
            for a, e in zip(actual, expected, strict=True):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_backward_and_mtl_backward_equal_eager(backend) -> None:
    model, twin, compiled = eager_and_compiled(backend)
    heads = nn.ModuleList([nn.Linear(3, 1) for _ in range(3)])
    twin_heads = copy.deepcopy(heads)
    x = torch.randn(6, 5)
    with fresh_compilation():
        backward(compiled(x).sum(dim=0))
        backward(model(x).sum(dim=0))
        features, twin_features = model(x), compiled(x)
        mtl_backward([h(features).square().mean() for h in heads], features)
        mtl_backward([h(twin_features).square().mean() for h in twin_heads], twin_features)
    for p, q in zip(
        [*model.parameters(), *heads.parameters()],
        [*twin.parameters(), *twin_heads.parameters()],
        strict=True,
    ):
        for field in ("jac", "grad"):
            if getattr(p, field, None) is not None:
                torch.testing.assert_close(
                    getattr(q, field), getattr(p, field), rtol=1e-5, atol=1e-6
                )


def optimizer_steps(
    trunk: nn.Module, heads: nn.ModuleList, multi_task: bool, device: str = "cpu"
) -> list[Tensor]:
    """Three steps of JacobianOptimizer with its default arguments; the parameters after them."""
    params = [*trunk.parameters(), *heads.parameters()]
    optimizer = JacobianOptimizer(torch.optim.SGD(params, lr=0.1), UPGrad())
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        features = trunk(torch.randn(6, 5, generator=generator).to(device))
        losses = [head(features).square().mean() for head in heads]
        optimizer.zero_grad()
        if multi_task:
            optimizer.step(losses, features=features)
        else:
            optimizer.step(torch.stack(losses))
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("multi_task", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_on_a_compiled_trunk_equals_eager(backend, multi_task) -> None:
    model, _, compiled = eager_and_compiled(backend)
    heads = nn.ModuleList([nn.Linear(3, 1) for _ in range(3)])
    with fresh_compilation():
        actual = optimizer_steps(compiled, copy.deepcopy(heads), multi_task)
    expected = optimizer_steps(model, heads, multi_task)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


# What cannot work says so.


@pytest.mark.parametrize("parallel_chunk_size", [None, 2])
def test_vectorised_chunks_through_a_compiled_region_are_refused(parallel_chunk_size) -> None:
    with fresh_compilation():
        model, output = compiled_output("aot_eager")
        with pytest.raises(
            ValueError, match=r"`parallel_chunk_size` must be 1 or 'auto'.*torch\.compile"
        ):
            jac(
                output.sum(dim=0), list(model.parameters()), parallel_chunk_size=parallel_chunk_size
            )


def test_a_compiled_backward_built_for_one_pass_is_refused() -> None:
    with fresh_compilation():
        model, output = compiled_output("aot_eager")
        output.sum().backward()  # builds the compiled backward for a single pass
        output = torch.compile(model, backend="aot_eager")(torch.randn(6, 5))
        params = list(model.parameters())
        with pytest.raises(RuntimeError, match="donated_buffer = False"):
            jac(output.sum(dim=0), params)
        # A single pass that frees the graph is still fine.
        (gradient,) = jac(output.sum(), params[:1])
        assert gradient.shape == (1, *params[0].shape)


def test_switching_donated_buffers_off_before_compiling_makes_it_work() -> None:
    with fresh_compilation(), torch._functorch.config.patch(donated_buffer=False):
        model, output = compiled_output("aot_eager")
        output.sum().backward()
        output = torch.compile(model, backend="aot_eager")(torch.randn(6, 5))
        (jacobian,) = jac(output.sum(dim=0), list(model.parameters())[:1])
    assert jacobian.shape == (3, 7, 5)


# On a CUDA device (run by benchmarks/gpu_check.sh).


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_vectorises_convolutions_on_cuda() -> None:
    model = cnn().cuda()
    output = model(torch.randn(2, 2, 6, 6, device="cuda"))
    assert choose_chunk_size("auto", survey_graph([output]), 7, output.device) == 7
    automatic = jac(output, list(model.parameters()), retain_graph=True)
    expected = jac(output, list(model.parameters()), parallel_chunk_size=1)
    for a, e in zip(automatic, expected, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("multi_task", [False, True])
def test_optimizer_on_a_compiled_trunk_equals_eager_on_cuda(multi_task) -> None:
    model = mlp().cuda()
    heads = nn.ModuleList([nn.Linear(3, 1) for _ in range(3)]).cuda()
    twin, twin_heads = copy.deepcopy(model), copy.deepcopy(heads)
    with fresh_compilation():
        actual = optimizer_steps(torch.compile(twin), twin_heads, multi_task, device="cuda")
    expected = optimizer_steps(model, heads, multi_task, device="cuda")
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
