"""The two-objective toy of the conflict-averse and Nash-MTL papers, for every method.

The problem (x ∈ ℝ²): with ``c₊ = max(tanh(x₂/2), 0)`` and ``c₋ = max(tanh(-x₂/2), 0)``,

- ``f₁ = c₊ (log max(|-(x₁+7)/2 - tanh(-x₂)|, 5e-6) + 6) + c₋ (((7-x₁)² + 0.1(x₂+8)²)/10 - 20)``
- ``f₂ = c₊ (log max(|(3-x₁)/2 + tanh(-x₂) + 2|, 5e-6) + 6) + c₋ (((7+x₁)² + 0.1(x₂+8)²)/10 - 20)``

and the Nash-MTL paper's imbalance: ``L₁ = 0.1 f₁``, ``L₂ = f₂``. Both are shifted up by a constant
(``L₁ + 2.1``, ``L₂ + 21``) so that they stay positive: this changes no gradient, and the methods
that read the loss values (logarithms, ratios: DB-MTL, FAMO, the geometric mean, UW...) need it.
Its Pareto set is the segment
``x₁ ∈ [-7, 7]`` around ``x₂ ≈ -8``; above ``x₂ = 0`` the log terms make valleys that trap a
method following one loss. Starts (-8.5, 7.5), (0, 0), (9, 9), (-7.5, -0.5), (9, -1); Adam.

The five starts are batched: one ``[5, 2]`` parameter, one autograd pass for the ``[5, 2, 2]``
Jacobians, one aggregator instance per start (the methods keep state per run), one Adam over the
``[5, 2]`` tensor (Adam is elementwise, so it equals five Adams). :func:`check_against_optimizer`
runs the same start through :class:`jdoptim.JacobianOptimizer` and reports the largest
difference of the iterates (zero: the driver is the optimizer's computation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import Aggregator
from jdoptim.scalarization import DWA, FAMO, Scalarizer

Method = Aggregator | Scalarizer
#: Steps per "epoch" for DWA, which compares the average losses of the last two epochs.
DWA_EPOCH = 25

STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
LOSS_SCALES = (0.1, 1.0)
OFFSETS = (2.1, 21.0)
REACH_DISTANCE = 0.05
#: An update conflicts with a loss when the cosine between them is below minus this.
CONFLICT_TOLERANCE = 1e-4


def losses(x: Tensor) -> Tensor:
    """The two scaled losses at ``x`` (shape ``[..., 2]``), as ``[..., 2]``."""
    x1, x2 = x[..., 0], x[..., 1]
    above = torch.tanh(0.5 * x2).clamp(min=0.0)
    below = torch.tanh(-0.5 * x2).clamp(min=0.0)
    log1 = torch.log((-0.5 * (x1 + 7.0) - torch.tanh(-x2)).abs().clamp(min=5e-6)) + 6.0
    log2 = torch.log((0.5 * (3.0 - x1) + torch.tanh(-x2) + 2.0).abs().clamp(min=5e-6)) + 6.0
    bowl1 = ((7.0 - x1) ** 2 + 0.1 * (x2 + 8.0) ** 2) / 10.0 - 20.0
    bowl2 = ((7.0 + x1) ** 2 + 0.1 * (x2 + 8.0) ** 2) / 10.0 - 20.0
    f1 = above * log1 + below * bowl1
    f2 = above * log2 + below * bowl2
    return torch.stack([LOSS_SCALES[0] * f1 + OFFSETS[0], LOSS_SCALES[1] * f2 + OFFSETS[1]], dim=-1)


@dataclass
class ParetoSet:
    """Non-dominated points of a grid over [-10, 10]² (parameters and their losses)."""

    points: Tensor
    values: Tensor

    def distance(self, x: Tensor) -> Tensor:
        """Euclidean distance (parameter space) of each row of ``x`` to the set."""
        return torch.cdist(x.to(self.points.dtype), self.points).min(dim=1).values


def pareto_set(spacing: float = 0.01) -> ParetoSet:
    n = round(20.0 / spacing) + 1
    axis = torch.linspace(-10.0, 10.0, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    values = losses(grid)
    order = torch.argsort(values[:, 1])
    order = order[torch.argsort(values[order, 0], stable=True)]
    sorted_values = values[order]
    best_so_far = torch.cummin(sorted_values[:, 1], dim=0).values
    keep = torch.ones(len(order), dtype=torch.bool)
    keep[1:] = sorted_values[1:, 1] < best_so_far[:-1]
    return ParetoSet(grid[order][keep], sorted_values[keep])


@dataclass
class ToyRun:
    name: str
    trajectory: Tensor  # [saved, 5, 2]
    loss_trajectory: Tensor  # [saved, 5, 2]
    seconds_per_step: float  # per start and step (the five starts are batched)
    conflicting_updates: int  # updates d with cos(g_i, d) < -CONFLICT_TOLERANCE for some i
    both_rose: int  # steps after which both losses of a start were higher
    steps: int
    min_alignment: float = field(default=math.inf)  # min_i g_i·d / (|g_i| |d|) over the run


def _jacobians(x: Tensor) -> tuple[Tensor, Tensor]:
    """Losses ``[k, 2]`` and Jacobians ``[k, 2, 2]`` of ``k`` independent starts."""
    x = x.detach().requires_grad_(True)
    values = losses(x)
    rows = [torch.autograd.grad(values[:, i].sum(), x, retain_graph=i == 0)[0] for i in range(2)]
    return values.detach(), torch.stack(rows, dim=1)


def run_batched(
    name: str,
    factory: Callable[[], Method],
    steps: int,
    lr: float,
    starts: tuple[tuple[float, float], ...] = STARTS,
    save_every: int = 1,
    seed: int = 0,
) -> ToyRun:
    """Adam on all ``starts`` at once, one method instance per start.

    An aggregator gets each start's Jacobian; a scalarizer's scalars are summed over the
    starts (independent, so the gradient is each start's own) and back-propagated, its own
    parameters (UW, IMTL-L) trained by the same Adam; FAMO is updated after each step with the
    new losses and DWA's epoch ends every ``DWA_EPOCH`` steps.
    """
    torch.manual_seed(seed)
    x = torch.tensor(starts, dtype=torch.float32, requires_grad=True)
    aggregators = [factory() for _ in starts]
    params = [x] + [p for method in aggregators for p in method.parameters()]
    adam = torch.optim.Adam(params, lr=lr)
    scalarizing = isinstance(aggregators[0], Scalarizer)
    saved_x, saved_l = [x.detach().clone()], [losses(x.detach())]
    conflicting = both_rose = 0
    min_alignment = math.inf
    previous: Tensor | None = None
    start_time = time.perf_counter()
    for step in range(steps):
        values, jacobians = _jacobians(x)
        if previous is not None:
            both_rose += int((values > previous).all(dim=1).sum())
        previous = values
        if scalarizing:
            adam.zero_grad()
            live = losses(x)
            torch.stack([s(live[k]) for k, s in enumerate(aggregators)]).sum().backward()
            assert x.grad is not None
            update = x.grad.clone()
        else:
            update = torch.stack(
                [a(jacobians[k], losses=values[k]) for k, a in enumerate(aggregators)]
            )
        products = torch.einsum("kij,kj->ki", jacobians, update)
        norms = jacobians.norm(dim=2) * update.norm(dim=1, keepdim=True)
        alignment = torch.where(norms > 0, products / norms.clamp(min=1e-30), 0.0)
        # Near a Pareto-stationary point (opposite gradients) the update is float32 noise, of
        # any direction: only updates of at least 1e-3 of the largest gradient are judged.
        significant = update.norm(dim=1) >= 1e-3 * jacobians.norm(dim=2).amax(dim=1)
        conflicting += int(((alignment < -CONFLICT_TOLERANCE).any(dim=1) & significant).sum())
        alignment = torch.where(significant.unsqueeze(1), alignment, 0.0)
        min_alignment = min(min_alignment, float(alignment.min()))
        x.grad = update
        adam.step()
        _after_step(aggregators, x, step)
        if (step + 1) % save_every == 0 or step + 1 == steps:
            saved_x.append(x.detach().clone())
            saved_l.append(losses(x.detach()))
    elapsed = time.perf_counter() - start_time
    return ToyRun(
        name,
        torch.stack(saved_x),
        torch.stack(saved_l),
        elapsed / (steps * len(starts)),
        conflicting,
        both_rose,
        steps,
        min_alignment,
    )


def _after_step(methods: list[Method], x: Tensor, step: int) -> None:
    if isinstance(methods[0], FAMO):
        with torch.no_grad():
            new = losses(x)
        for k, method in enumerate(methods):
            assert isinstance(method, FAMO)
            method.update(new[k])
    if isinstance(methods[0], DWA) and (step + 1) % DWA_EPOCH == 0:
        for method in methods:
            assert isinstance(method, DWA)
            method.step()


def run_optimizer(
    factory: Callable[[], Method],
    steps: int,
    lr: float,
    start: tuple[float, float],
    seed: int = 0,
) -> tuple[Tensor, float]:
    """The same start through ``JacobianOptimizer``: the iterates ``[steps + 1, 2]`` and the
    seconds per step."""
    torch.manual_seed(seed)
    x = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
    method = factory()
    if isinstance(method, Scalarizer):
        return _run_scalarizer(method, steps, lr, x)
    optimizer = JacobianOptimizer(torch.optim.Adam([x], lr=lr), method)
    iterates = [x.detach().clone()]
    start_time = time.perf_counter()
    for _ in range(steps):
        values = losses(x)
        optimizer.zero_grad()
        optimizer.step([values[0], values[1]])
        iterates.append(x.detach().clone())
    return torch.stack(iterates), (time.perf_counter() - start_time) / steps


def _run_scalarizer(method: Scalarizer, steps: int, lr: float, x: Tensor) -> tuple[Tensor, float]:
    """A scalarizer through ``JacobianOptimizer``'s scalarizer mode (stepped with a closure, so
    that FAMO gets the losses after the step)."""
    optimizer = JacobianOptimizer(torch.optim.Adam([x], lr=lr), scalarizer=method)

    def closure() -> Tensor:
        optimizer.zero_grad()
        return losses(x)

    iterates = [x.detach().clone()]
    start_time = time.perf_counter()
    for step in range(steps):
        optimizer.step(closure)
        if isinstance(method, DWA) and (step + 1) % DWA_EPOCH == 0:
            method.step()
        iterates.append(x.detach().clone())
    return torch.stack(iterates), (time.perf_counter() - start_time) / steps


def batched_iterates(
    factory: Callable[[], Method], steps: int, lr: float, start: tuple[float, float]
) -> Tensor:
    return run_batched("check", factory, steps, lr, starts=(start,)).trajectory[:, 0]


def check_against_optimizer(
    factory: Callable[[], Method], steps: int, lr: float, start: tuple[float, float]
) -> tuple[float, float]:
    """Largest ``|x_batched - x_optimizer|`` over ``steps`` steps from ``start`` (same seed),
    and the optimizer's seconds per step."""
    reference, seconds = run_optimizer(factory, steps, lr, start)
    batched = batched_iterates(factory, steps, lr, start)
    return float((batched - reference).abs().max()), seconds


def summary(run: ToyRun, front: ParetoSet) -> dict[str, object]:
    final_x = run.trajectory[-1]
    final_l = run.loss_trajectory[-1]
    distance = front.distance(final_x)
    return {
        "reached": int((distance < REACH_DISTANCE).sum()),
        "distance": distance.tolist(),
        "final_losses": final_l.tolist(),
        "final_x": final_x.tolist(),
    }
