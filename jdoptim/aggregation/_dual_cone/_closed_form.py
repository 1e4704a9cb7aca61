"""Exact solutions of the dual-cone problem for one or two objectives, without a QP solver.

With ``v_A = u_A`` on an active set ``A``, the free coordinates minimise ``vᵀGv`` in closed form
(``v_i = -G_ij u_j / G_ii`` for one free index ``i``, ``v = 0`` for two). The minimiser over
``v ≥ u`` is one of these face minimisers, and every feasible one is a feasible point: the
feasible one with the least objective is the solution. Four candidates per problem, no iteration
and no numpy round trip.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Largest ratio G00 G11 / det G for which the closed form of two objectives is used; above it (a
# nearly singular G, reachable only with reg_eps = 0) the problem goes to a general solver.
_CLOSED_FORM_MAX_CONDITION = 1e10


def solve_closed_form(gramian: Tensor, lower_bounds: Tensor) -> Tensor | None:
    """Exact solutions for ``m <= 2`` on the CPU in float64 arithmetic, or ``None`` (then the
    caller uses a general solver and its jitter ladder) for a non-finite or nearly singular
    ``G``, where the least objective among the candidates is decided by rounding."""
    m = gramian.shape[0]
    g: list[list[float]] = gramian.detach().to(device="cpu", dtype=torch.float64).tolist()
    bounds: list[list[float]] = lower_bounds.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(x) for row in g + bounds for x in row):
        return None
    solutions: list[list[float]] = []
    if m == 1:
        if not g[0][0] > 0.0:
            return None
        solutions = [[max(u[0], 0.0)] for u in bounds]
    else:
        a, b, c = g[0][0], (g[0][1] + g[1][0]) / 2.0, g[1][1]
        if not (a > 0.0 and c > 0.0 and a * c - b * b > a * c / _CLOSED_FORM_MAX_CONDITION):
            return None

        def objective(v: tuple[float, float]) -> float:
            return a * v[0] ** 2 + 2.0 * b * v[0] * v[1] + c * v[1] ** 2

        for u0, u1 in bounds:
            candidates = [(u0, u1), (-b * u1 / a, u1), (u0, -b * u0 / c), (0.0, 0.0)]
            feasible: list[tuple[float, float]] = [
                (v0, v1) for v0, v1 in candidates if v0 >= u0 and v1 >= u1
            ]
            best = min(feasible, key=objective)
            solutions.append([best[0], best[1]])
    return torch.tensor(solutions, dtype=gramian.dtype).reshape(lower_bounds.shape)


# On the CPU, quadprog's per-problem solves beat the batched torch solver's fixed cost up to about
# this many objectives (measured on a 2-core CPU, one thread, UPGradWeighting on the Gramians of
# random [m, 1000] Jacobians: 0.29 vs 0.83 ms at m = 8, 0.94 vs 0.95 ms at m = 24, 1.9 vs 1.0 ms
