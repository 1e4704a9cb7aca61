"""The stateful and loss-aware methods, each with a uniform way to call it on a Jacobian.

Each case builds the module and calls it the way a user would: Gramian weightings on ``J Jᵀ``,
the double-sampling weightings on a cross matrix ``J₁ J₂ᵀ``, Jacobian weightings and
aggregators on ``J``, the loss-aware ones with ``losses=``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from jdoptim import aggregation as agg


def _second_batch(matrix: Tensor) -> Tensor:
    """A second mini-batch's Jacobian: the same rows, slightly perturbed (seeded)."""
    noise = torch.randn(matrix.shape, generator=torch.Generator().manual_seed(7))
    return matrix + 0.3 * noise.to(matrix)


def gramian_call(module: nn.Module, matrix: Tensor, losses: Tensor) -> Tensor:
    return module(matrix @ matrix.T)  # type: ignore[no-any-return]


def cross_call(module: nn.Module, matrix: Tensor, losses: Tensor) -> Tensor:
    return module(matrix @ _second_batch(matrix).T)  # type: ignore[no-any-return]


def matrix_call(module: nn.Module, matrix: Tensor, losses: Tensor) -> Tensor:
    return module(matrix)  # type: ignore[no-any-return]


def gramian_losses_call(module: nn.Module, matrix: Tensor, losses: Tensor) -> Tensor:
    return module(matrix @ matrix.T, losses=losses)  # type: ignore[no-any-return]


def matrix_losses_call(module: nn.Module, matrix: Tensor, losses: Tensor) -> Tensor:
    return module(matrix, losses=losses)  # type: ignore[no-any-return]


def double_sampling_call(module: nn.Module, matrix: Tensor, losses: Tensor) -> Tensor:
    batches = torch.stack([matrix, _second_batch(matrix), matrix.flip(0)])
    return module(torch.einsum("aip,bjp->aijb", batches, batches))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class MethodCase:
    name: str
    make: Callable[[], nn.Module]
    call: Callable[[nn.Module, Tensor, Tensor], Tensor]
    #: Whether the output is an aggregation ``[n]`` (else weights).
    aggregates: bool = False
    differentiable: bool = False

    def __repr__(self) -> str:
        return self.name


CASES = [
    MethodCase("FairGrad", lambda: agg.FairGrad(alpha=0.5), matrix_call, aggregates=True),
    MethodCase("FairGradWeighting", lambda: agg.FairGradWeighting(alpha=2.0), gramian_call),
    MethodCase("GradVac", lambda: agg.GradVac(), matrix_call, aggregates=True),
    MethodCase("GradVacWeighting", lambda: agg.GradVacWeighting(beta=0.3), gramian_call),
    MethodCase("ExcessMTL", lambda: agg.ExcessMTL(), matrix_call, aggregates=True),
    MethodCase("ExcessMTLWeighting", lambda: agg.ExcessMTLWeighting(0.5, 2), matrix_call),
    MethodCase("PCD", lambda: agg.PCD(tau=0.2, beta=0.9), matrix_call, aggregates=True),
    MethodCase("PCDWeighting", lambda: agg.PCDWeighting(), gramian_call),
    MethodCase(
        "CRMOGMWeighting(UPGrad)",
        lambda: agg.CRMOGMWeighting(agg.UPGradWeighting(), alpha=0.7),
        gramian_call,
    ),
    MethodCase(
        "CRMOGMWeighting(MGDA)",
        lambda: agg.CRMOGMWeighting(agg.MGDAWeighting(), alpha=0.5),
        gramian_call,
        differentiable=True,
    ),
    MethodCase(
        "CRMOGMWeighting(ExcessMTL)",
        lambda: agg.WeightedAggregator(agg.CRMOGMWeighting(agg.ExcessMTLWeighting())),
        matrix_call,
        aggregates=True,
    ),
    MethodCase(
        "CRMOGMWeighting(GradNorm)",
        lambda: agg.CRMOGMWeighting(agg.GradNormWeighting(lr=0.1)),
        gramian_losses_call,
    ),
    MethodCase("MoDoWeighting", lambda: agg.MoDoWeighting(), cross_call),
    MethodCase("SDMGradWeighting", lambda: agg.SDMGradWeighting(), cross_call),
    MethodCase(
        "DoubleSampling(MoDo)",
        lambda: agg.DoubleSampling(agg.MoDoWeighting()),
        double_sampling_call,
    ),
    MethodCase(
        "DoubleSampling(SDMGrad, mean)",
        lambda: agg.DoubleSampling(agg.SDMGradWeighting(), update="mean"),
        lambda module, matrix, losses: module(
            torch.einsum(
                "aip,bjp->aijb",
                torch.stack([matrix, _second_batch(matrix)]),
                torch.stack([matrix, _second_batch(matrix)]),
            )
        ),
    ),
    MethodCase("DBMTL", lambda: agg.DBMTL(), matrix_losses_call, aggregates=True),
    MethodCase("DBMTLWeighting", lambda: agg.DBMTLWeighting(), gramian_losses_call),
    MethodCase(
        "GramianWeightedAggregator(DBMTLWeighting)",
        lambda: agg.GramianWeightedAggregator(agg.DBMTLWeighting()),
        matrix_losses_call,
        aggregates=True,
    ),
    MethodCase("MoCo", lambda: agg.MoCo(), matrix_call, aggregates=True),
    MethodCase("GradNormWeighting", lambda: agg.GradNormWeighting(lr=0.1), gramian_losses_call),
    MethodCase(
        "GramianWeightedAggregator(GradNormWeighting)",
        lambda: agg.GramianWeightedAggregator(agg.GradNormWeighting(lr=0.1)),
        matrix_losses_call,
        aggregates=True,
    ),
]

STATELESS = {
    "FairGrad",
    "FairGradWeighting",
    "DBMTLWeighting",
    "GramianWeightedAggregator(DBMTLWeighting)",
}

STATEFUL_CASES = [case for case in CASES if case.name not in STATELESS]


def params(cases: list[MethodCase]) -> list[object]:
    return [pytest.param(case, id=case.name) for case in cases]


def jacobians(count: int = 5, m: int = 3, n: int = 4, seed: int = 0) -> list[Tensor]:
    """``count`` seeded Jacobians ``[m, n]`` whose rows conflict, in float64."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(m, n, generator=generator, dtype=torch.float64) for _ in range(count)]


def losses(count: int = 5, m: int = 3, seed: int = 1) -> list[Tensor]:
    """``count`` seeded vectors of positive loss values ``[m]``, in float64."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(m, generator=generator, dtype=torch.float64) + 0.5 for _ in range(count)]
