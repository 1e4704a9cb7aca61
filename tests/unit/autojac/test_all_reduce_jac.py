"""`all_reduce_jac` averages `.jac` across two gloo ranks with one collective."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _distributed import run_on_two_ranks
from torch import nn

from jdoptim.autojac import all_reduce_jac, backward


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=generator, dtype=torch.float64), torch.randn(
        8, 3, generator=generator, dtype=torch.float64
    )


def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).pow(2).mean(dim=0)  # one mean-reduced loss per output: m = 3


def _rank_jacobians(rank: int) -> dict[str, list[torch.Tensor]]:
    return {"mean": _reduced(rank, average=True), "sum": _reduced(rank, average=False)}


def _reduced(rank: int, average: bool) -> list[torch.Tensor]:
    model = _model()
    x, y = _data()
    shard = slice(4 * rank, 4 * (rank + 1))
    backward(_losses(model, x[shard], y[shard]))
    calls = []
    original = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counting_all_reduce  # type: ignore[assignment]
    try:
        all_reduce_jac(model.parameters(), average=average)
    finally:
        dist.all_reduce = original
    return [torch.tensor(len(calls))] + [p.jac for p in model.parameters()]


@pytest.mark.timeout(150)
def test_average_of_shard_jacobians_is_the_full_batch_jacobian(tmp_path: Path) -> None:
    both = run_on_two_ranks(_rank_jacobians, tmp_path)
    results = [rank_result["mean"] for rank_result in both]
    model = _model()
    x, y = _data()
    backward(_losses(model, x, y))
    expected = [p.jac for p in model.parameters()]
    for rank_result in results:
        assert rank_result[0].item() == 1  # one collective for all the parameters
        for got, want in zip(rank_result[1:], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for got0, got1 in zip(results[0][1:], results[1][1:], strict=True):
        assert torch.equal(got0, got1)
    # average=False keeps the sum over the two ranks.
    for rank_result in both:
        for got, mean in zip(rank_result["sum"][1:], rank_result["mean"][1:], strict=True):
            torch.testing.assert_close(got, 2 * mean, rtol=1e-12, atol=1e-12)


def test_requires_an_initialised_process_group() -> None:
    param = torch.ones(2, requires_grad=True)
    backward(param.sum())
    with pytest.raises(ValueError, match="process_group"):
        all_reduce_jac([param])


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="tensors"):
        all_reduce_jac([])
    param = torch.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="average"):
        all_reduce_jac([param], average=1)  # type: ignore[arg-type]
