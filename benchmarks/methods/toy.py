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

The runs are batched: every start of every method is one row of a single ``[methods × 5, 2]``
parameter, so that one forward pass and two backward passes give all the ``[2, 2]`` Jacobians of
a step, one Adam steps all rows (Adam is elementwise, so it equals one Adam per run), and the
statistics are computed on all rows at once. Each method has one instance per start (the methods
keep state per run) and its own random stream. Only the methods' own calls remain per start:
they are what a step costs. :func:`check_against_optimizer` runs one start through
:class:`jdoptim.JacobianOptimizer` and through this driver and reports the largest difference of
the iterates (zero: the driver is the optimizer's computation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

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
    seconds_per_step: float  # in the method's own calls, per start and step
    conflicting_updates: int  # updates d with cos(g_i, d) < -CONFLICT_TOLERANCE for some i
    both_rose: int  # steps after which both losses of a start were higher
    steps: int
    min_alignment: float = field(default=math.inf)  # min_i g_i·d / (|g_i| |d|) over the run
    #: Wall time of the whole batched run per start, step and method (shared work included).
    shared_seconds_per_step: float = 0.0


@dataclass
class _Member:
    """One method of a batched run: its instances (one per start), its rows of the shared
    parameter and its own random stream."""

    name: str
    instances: list[Method]
    rows: slice
    rng: Tensor
    seconds: float = 0.0

    @property
    def scalarizing(self) -> bool:
        return isinstance(self.instances[0], Scalarizer)


def run_many(
    methods: Sequence[tuple[str, Callable[[], Method]]],
    steps: int,
    lr: float,
    starts: tuple[tuple[float, float], ...] = STARTS,
    save_every: int = 1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[ToyRun]:
    """Adam on all ``starts`` of all ``methods`` at once, one method instance per start.

    The rows of one ``[len(methods) * len(starts), 2]`` parameter are independent runs: one
    forward pass and two backward passes give every row its ``[2, 2]`` Jacobian, one Adam
    (elementwise) steps them all, and the statistics are computed on all rows together. Each
    method keeps its own random stream (saved and restored around its calls), so that a method
    follows the same trajectory whatever runs next to it.

    An aggregator gets each start's Jacobian; a scalarizer's scalars are summed over its starts
    (independent, so the gradient is each start's own) and back-propagated, its own parameters
    (UW, IMTL-L) trained by the same Adam; FAMO is updated after each step with the new losses
    and DWA's epoch ends every ``DWA_EPOCH`` steps. ``progress`` gets a line every 1,000 steps.
    """
    k = len(starts)
    members = []
    for index, (name, factory) in enumerate(methods):
        torch.manual_seed(seed)
        instances = [factory() for _ in starts]
        rows = slice(index * k, (index + 1) * k)
        members.append(_Member(name, instances, rows, torch.get_rng_state()))
    x = torch.tensor(starts * len(methods), dtype=torch.float32, requires_grad=True)
    extra = [p for member in members for method in member.instances for p in method.parameters()]
    adam = torch.optim.Adam([x, *extra], lr=lr)
    scalarizers = [member for member in members if member.scalarizing]
    any_famo = any(isinstance(member.instances[0], FAMO) for member in members)
    saved_x, saved_l = [x.detach().clone()], [losses(x.detach())]
    n_rows = x.shape[0]
    conflicting = torch.zeros(n_rows, dtype=torch.int64)
    both_rose = torch.zeros(n_rows, dtype=torch.int64)
    min_alignment = torch.full((n_rows,), math.inf)
    values = losses(x)
    previous: Tensor | None = None
    start_time = time.perf_counter()
    for step in range(steps):
        jacobians = torch.stack(
            [
                torch.autograd.grad(
                    values[:, i].sum(), x, retain_graph=i == 0 or bool(scalarizers)
                )[0]
                for i in range(2)
            ],
            dim=1,
        )
        detached = values.detach()
        if previous is not None:
            both_rose += (detached > previous).all(dim=1)
        previous = detached
        updates: list[Tensor] = [torch.empty(0)] * len(members)
        if scalarizers:
            adam.zero_grad()
            scalars = []
            for member in scalarizers:
                started = time.perf_counter()
                torch.set_rng_state(member.rng)
                scalars += [
                    s(values[member.rows.start + j]) for j, s in enumerate(member.instances)
                ]
                member.rng = torch.get_rng_state()
                member.seconds += time.perf_counter() - started
            torch.autograd.backward(torch.stack(scalars).sum())
            assert x.grad is not None
            for index, member in enumerate(members):
                if member.scalarizing:
                    updates[index] = x.grad[member.rows].clone()
        for index, member in enumerate(members):
            if member.scalarizing:
                continue
            started = time.perf_counter()
            torch.set_rng_state(member.rng)
            block = jacobians[member.rows]
            own = detached[member.rows]
            updates[index] = torch.stack(
                [
                    cast(Aggregator, a)(block[j], losses=own[j])
                    for j, a in enumerate(member.instances)
                ]
            )
            member.rng = torch.get_rng_state()
            member.seconds += time.perf_counter() - started
        update = torch.cat(updates)
        products = torch.einsum("kij,kj->ki", jacobians, update)
        norms = jacobians.norm(dim=2) * update.norm(dim=1, keepdim=True)
        alignment = torch.where(norms > 0, products / norms.clamp(min=1e-30), 0.0)
        # Near a Pareto-stationary point (opposite gradients) the update is float32 noise, of
        # any direction: only updates of at least 1e-3 of the largest gradient are judged.
        significant = update.norm(dim=1) >= 1e-3 * jacobians.norm(dim=2).amax(dim=1)
        conflicting += (alignment < -CONFLICT_TOLERANCE).any(dim=1) & significant
        alignment = torch.where(significant.unsqueeze(1), alignment, 0.0)
        min_alignment = torch.minimum(min_alignment, alignment.amin(dim=1))
        x.grad = update
        adam.step()
        values = losses(x)
        if any_famo:
            new = values.detach()
            for member in members:
                if isinstance(member.instances[0], FAMO):
                    for j, method in enumerate(member.instances):
                        assert isinstance(method, FAMO)
                        method.update(new[member.rows.start + j])
        if (step + 1) % DWA_EPOCH == 0:
            for member in members:
                for method in member.instances:
                    if isinstance(method, DWA):
                        method.step()
        if (step + 1) % save_every == 0 or step + 1 == steps:
            saved_x.append(x.detach().clone())
            saved_l.append(values.detach().clone())
        if progress is not None and (step + 1) % 1000 == 0:
            seconds = time.perf_counter() - start_time
            progress(f"{members[0].name}…: step {step + 1}/{steps} in {seconds:.0f} s")
    elapsed = time.perf_counter() - start_time
    trajectory, loss_trajectory = torch.stack(saved_x), torch.stack(saved_l)
    return [
        ToyRun(
            member.name,
            trajectory[:, member.rows],
            loss_trajectory[:, member.rows],
            member.seconds / (steps * k),
            int(conflicting[member.rows].sum()),
            int(both_rose[member.rows].sum()),
            steps,
            float(min_alignment[member.rows].min()),
            elapsed / (steps * k * len(members)),
        )
        for member in members
    ]


def run_batched(
    name: str,
    factory: Callable[[], Method],
    steps: int,
    lr: float,
    starts: tuple[tuple[float, float], ...] = STARTS,
    save_every: int = 1,
    seed: int = 0,
) -> ToyRun:
    """One method alone through :func:`run_many`."""
    return run_many([(name, factory)], steps, lr, starts, save_every, seed)[0]


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
