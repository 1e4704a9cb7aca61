"""Tests of jdoptim.autojac.jac_to_grad: aggregation of the .jac fields into .grad."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from _autojac_reference import mlp
from torch import Tensor, nn

from jdoptim import aggregation
from jdoptim.aggregation import (
    DBMTL,
    IMTLG,
    MGDA,
    PCD,
    Aggregator,
    AlignedMTL,
    CAGrad,
    ConFIG,
    Constant,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradDrop,
    GradVac,
    GramianWeightedAggregator,
    Krum,
    Mean,
    MoCo,
    NashMTL,
    PCGrad,
    Random,
    Sum,
    TrimmedMean,
    UPGrad,
    WeightedAggregator,
)
from jdoptim.autojac import backward, jac_to_grad

M = 4
LOSSES = torch.tensor([1.0, 0.5, 2.0, 0.25], dtype=torch.float64)

AGGREGATORS: dict[str, Callable[[], Aggregator]] = {
    "AlignedMTL": AlignedMTL,
    "DBMTL": DBMTL,
    "ExcessMTL": ExcessMTL,
    "FairGrad": lambda: FairGrad(alpha=1.0),
    "GradVac": GradVac,
    "MoCo": MoCo,
    "PCD": PCD,
    "CAGrad": lambda: CAGrad(c=0.5),
    "ConFIG": ConFIG,
    "Constant": lambda: Constant(torch.tensor([1.0, 2.0, 0.5, 0.0], dtype=torch.float64)),
    "DualProj": DualProj,
    "GradDrop": GradDrop,
    "IMTLG": IMTLG,
    "Krum": lambda: Krum(n_byzantine=1, n_selected=2),
    "MGDA": MGDA,
    "Mean": Mean,
    "NashMTL": lambda: NashMTL(n_tasks=M),
    "PCGrad": PCGrad,
    "Random": Random,
    "Sum": Sum,
    "TrimmedMean": lambda: TrimmedMean(trim_number=1),
    "UPGrad": UPGrad,
}


def test_every_exported_aggregator_is_covered() -> None:
    exported = {
        name
        for name in aggregation.__all__
        if inspect.isclass(getattr(aggregation, name))
        and issubclass(getattr(aggregation, name), Aggregator)
        and not inspect.isabstract(getattr(aggregation, name))
        and name not in ("GramianWeightedAggregator", "WeightedAggregator")
    }
    assert exported == set(AGGREGATORS)


def model_with_jacobian() -> tuple[nn.Module, Tensor]:
    """A float64 MLP whose parameters hold the .jac of M losses, and that Jacobian as a matrix."""
    model = mlp().double()
    outputs = model(torch.randn(M, 5, dtype=torch.float64))
    backward(outputs.square().sum(dim=1))
    matrix = torch.cat([p.jac.reshape(M, -1) for p in model.parameters()], dim=1)
    return model, matrix


def split(vector: Tensor, model: nn.Module) -> list[Tensor]:
    sizes = [p.numel() for p in model.parameters()]
    return [v.reshape(p.shape) for v, p in zip(vector.split(sizes), model.parameters())]


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_matches_the_aggregator_on_the_concatenated_jacobian(name) -> None:
    model, matrix = model_with_jacobian()
    kwargs = {"losses": LOSSES} if AGGREGATORS[name]().requires_losses else {}
    torch.manual_seed(1)
    expected = AGGREGATORS[name]()(matrix.clone(), **kwargs)

    torch.manual_seed(1)
    aggregator = AGGREGATORS[name]()
    weights = jac_to_grad(model.parameters(), aggregator, **kwargs)

    for param, grad in zip(model.parameters(), split(expected, model), strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)
        assert not hasattr(param, "jac")
    if isinstance(aggregator, (GramianWeightedAggregator, WeightedAggregator)):
        assert weights is not None and weights.shape == (M,)
        torch.testing.assert_close(weights @ matrix, expected, rtol=1e-8, atol=1e-10)
    else:
        assert weights is None


def test_mean_gives_the_gradient_of_the_mean_loss() -> None:
    model = mlp().double()
    x = torch.randn(M, 5, dtype=torch.float64)
    expected = torch.autograd.grad(model(x).square().sum(dim=1).mean(), list(model.parameters()))

    backward(model(x).square().sum(dim=1))
    weights = jac_to_grad(model.parameters(), Mean())

    assert torch.equal(weights, torch.full((M,), 0.25, dtype=torch.float64))
    for param, grad in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-12, atol=1e-12)


def test_accumulates_into_existing_grad() -> None:
    model, matrix = model_with_jacobian()
    for param in model.parameters():
        param.grad = torch.ones_like(param)

    jac_to_grad(model.parameters(), Sum())

    for param, grad in zip(model.parameters(), split(matrix.sum(0), model), strict=True):
        torch.testing.assert_close(param.grad, grad + 1.0, rtol=1e-12, atol=1e-12)


def test_retain_jac_keeps_the_jacobians() -> None:
    model, _ = model_with_jacobian()

    jac_to_grad(model.parameters(), Mean(), retain_jac=True)
    first = [p.grad.clone() for p in model.parameters()]
    jac_to_grad(model.parameters(), Mean())

    assert all(not hasattr(param, "jac") for param in model.parameters())
    for param, grad in zip(model.parameters(), first, strict=True):
        torch.testing.assert_close(param.grad, 2 * grad, rtol=1e-12, atol=1e-12)


def test_retained_jac_has_the_original_values() -> None:
    model, matrix = model_with_jacobian()
    sizes = [p.numel() for p in model.parameters()]

    jac_to_grad(model.parameters(), Mean(), retain_jac=True)

    for param, columns in zip(model.parameters(), matrix.split(sizes, dim=1), strict=True):
        assert torch.equal(param.jac, columns.reshape(M, *param.shape))


def test_single_tensor() -> None:
    param = torch.tensor([1.0, 2.0], requires_grad=True)
    backward(torch.stack([param.pow(2).sum(), param.prod()]))

    weights = jac_to_grad(param, Sum())

    assert torch.equal(weights, torch.ones(2))
    assert torch.equal(param.grad, torch.tensor([4.0, 5.0]))


def test_two_groups_with_two_aggregators() -> None:
    model, matrix = model_with_jacobian()
    first_group = list(model[0].parameters())
    second_group = [*model[2].parameters(), *model[4].parameters()]
    split_at = sum(p.numel() for p in first_group)

    jac_to_grad(first_group, UPGrad())
    jac_to_grad(second_group, Mean())

    first = UPGrad()(matrix[:, :split_at])
    second = Mean()(matrix[:, split_at:])
    for param, grad in zip(model.parameters(), split(torch.cat([first, second]), model)):
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)


def test_aggregator_hooks_fire() -> None:
    model, _ = model_with_jacobian()
    aggregator = UPGrad()
    calls: list[str] = []
    aggregator.register_forward_hook(lambda *_: calls.append("aggregator"))
    aggregator.gramian_weighting.register_forward_hook(lambda *_: calls.append("weighting"))

    jac_to_grad(model.parameters(), aggregator)

    assert calls == ["weighting", "aggregator"]


def test_failed_aggregation_changes_nothing() -> None:
    model, matrix = model_with_jacobian()
    sizes = [p.numel() for p in model.parameters()]

    with pytest.raises(ValueError):
        jac_to_grad(model.parameters(), Constant(torch.ones(M + 1, dtype=torch.float64)))

    for param, columns in zip(model.parameters(), matrix.split(sizes, dim=1), strict=True):
        assert param.grad is None
        assert torch.equal(param.jac, columns.reshape(M, *param.shape))


def test_two_runs_are_bit_identical() -> None:
    def run() -> list[Tensor]:
        torch.manual_seed(5)
        model, _ = model_with_jacobian()
        jac_to_grad(model.parameters(), UPGrad())
        return [p.grad for p in model.parameters()]

    for first, second in zip(run(), run(), strict=True):
        assert torch.equal(first, second)


def test_error_empty_tensors() -> None:
    with pytest.raises(ValueError, match="`tensors`"):
        jac_to_grad([], Mean())


def test_error_missing_jac() -> None:
    model, _ = model_with_jacobian()
    del model[2].weight.jac
    with pytest.raises(ValueError, match=r"`tensors`.*`\.jac`"):
        jac_to_grad(model.parameters(), Mean())
    assert all(p.grad is None for p in model.parameters())


def test_error_mismatched_rows() -> None:
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    backward(a * 2)
    backward(b * 2)
    with pytest.raises(ValueError, match=r"`tensors`.*rows"):
        jac_to_grad([a, b], Mean())


def test_error_jac_of_wrong_shape() -> None:
    a = torch.randn(3, requires_grad=True)
    a.jac = torch.ones(2, 4)
    with pytest.raises(ValueError, match="`tensors`"):
        jac_to_grad([a], Mean())


def test_error_duplicate_tensors() -> None:
    a = torch.randn(3, requires_grad=True)
    backward(a * 2)
    with pytest.raises(ValueError, match="`tensors`"):
        jac_to_grad([a, a], Mean())


def test_error_not_an_aggregator() -> None:
    a = torch.randn(3, requires_grad=True)
    backward(a * 2)
    with pytest.raises(TypeError, match="`aggregator`"):
        jac_to_grad([a], lambda matrix: matrix.mean(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"the class UPGrad .*UPGrad\(\)"):
        jac_to_grad([a], UPGrad)  # type: ignore[arg-type]
    assert a.jac.shape == (3, 3)  # nothing lost


def test_jacobians_of_chunked_backward_are_aggregated_without_copy() -> None:
    model = mlp().double()
    x = torch.randn(M, 5, dtype=torch.float64)
    backward(model(x).square().sum(dim=1), parallel_chunk_size=3)
    storage = model[0].weight.jac.untyped_storage().data_ptr()
    matrix = torch.cat([p.jac.reshape(M, -1) for p in model.parameters()], dim=1)
    seen: list[int] = []
    aggregator = Mean()
    aggregator.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].untyped_storage().data_ptr())
    )

    jac_to_grad(model.parameters(), aggregator, retain_jac=True)

    assert seen == [storage]
    for param, grad in zip(model.parameters(), split(matrix.mean(0), model), strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-12, atol=1e-12)
        assert param.jac.untyped_storage().data_ptr() == storage


def test_two_groups_of_one_chunked_backward() -> None:
    model = mlp().double()
    x = torch.randn(M, 5, dtype=torch.float64)
    backward(model(x).square().sum(dim=1), parallel_chunk_size=2)
    matrix = torch.cat([p.jac.reshape(M, -1) for p in model.parameters()], dim=1)
    params = list(model.parameters())
    split_at = sum(p.numel() for p in params[2:])

    jac_to_grad(params[2:], Sum())
    jac_to_grad(params[:2], UPGrad())

    first_size = matrix.shape[1] - split_at
    expected = torch.cat([UPGrad()(matrix[:, :first_size]), Sum()(matrix[:, first_size:])])
    for param, grad in zip(params, split(expected, model), strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)


def test_losses_reach_a_loss_aware_aggregator_and_are_required_by_it() -> None:
    model, matrix = model_with_jacobian()
    with pytest.raises(TypeError, match="`losses`"):
        jac_to_grad(model.parameters(), DBMTL(beta=0.0))
    assert all(hasattr(p, "jac") and p.grad is None for p in model.parameters())
    losses = LOSSES.clone().requires_grad_()
    weights = jac_to_grad(model.parameters(), DBMTL(beta=0.0), losses=losses)
    expected = DBMTL(beta=0.0)(matrix, losses=LOSSES)
    for param, grad in zip(model.parameters(), split(expected, model), strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)
    assert weights is None  # DBMTL rescales the rows itself: it has no weights to report


def test_losses_are_ignored_by_aggregators_that_do_not_read_them() -> None:
    model, matrix = model_with_jacobian()
    jac_to_grad(model.parameters(), Mean(), losses=torch.ones(7))
    for param, grad in zip(model.parameters(), split(matrix.mean(dim=0), model), strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-10, atol=1e-12)
