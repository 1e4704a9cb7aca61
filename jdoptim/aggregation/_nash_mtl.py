"""Nash-MTL: the Nash bargaining solution between the objectives."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._bases import Aggregator
from ._checks import check_non_negative
from ._optional import require
from ._solver_failure import SolverFailure


def _require_solvers() -> Any:
    cvxpy = require("cvxpy", extra="nash_mtl", user="NashMTL")
    require("ecos", extra="nash_mtl", user="NashMTL")
    return cvxpy


def _check_int(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, but got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, but got {value!r}.")


class _BargainingStep:
    """The convex program of one step, built once per size with cvxpy parameters.

    minimize 1ᵀKα + ∇φ(αₜ)ᵀα subject to log αᵢ + log (Kα)ᵢ ≥ 0, where
    φ(α) = Σᵢ log αᵢ + log (Kα)ᵢ is linearised at the previous iterate αₜ (the linear term is
    dropped when αₜ is infeasible).
    """

    def __init__(self, size: int) -> None:
        cp = _require_solvers()
        self.cp = cp
        self.alpha = cp.Variable(size)
        self.gramian = cp.Parameter((size, size))
        self.gradient = cp.Parameter(size)
        combination = self.gramian @ self.alpha
        objective = cp.sum(combination) + self.gradient @ self.alpha
        constraints = [cp.log(self.alpha) + cp.log(combination) >= 0]
        self.problem = cp.Problem(cp.Minimize(objective), constraints)

    def solve(self, gramian: np.ndarray, previous: np.ndarray) -> np.ndarray:
        combination = gramian @ previous
        self.gramian.value = gramian
        if (combination > 0).all():
            self.gradient.value = 1.0 / previous + gramian @ (1.0 / combination)
        else:
            # φ is undefined at an infeasible αₜ (some (Kαₜ)ᵢ ≤ 0), and linearising it there can
            # make the step unbounded: drop the linear term, which gives a feasible point.
            self.gradient.value = np.zeros_like(previous)
        try:
            with warnings.catch_warnings():
                # cvxpy warns about inaccurate solutions; their feasibility is checked below.
                warnings.simplefilter("ignore")
                self.problem.solve(solver=self.cp.ECOS, max_iters=100)
        except (self.cp.error.SolverError, ValueError, ArithmeticError) as error:
            raise SolverFailure(f"{type(error).__name__}: {error}") from error
        value = self.alpha.value
        if self.problem.status not in ("optimal", "optimal_inaccurate") or value is None:
            raise SolverFailure(f"solver status {self.problem.status!r}")
        value = np.asarray(value, dtype=np.float64)
        if not (np.isfinite(value).all() and (value > 0).all()):
            raise SolverFailure("the solver returned non-positive or non-finite weights")
        if (value * (gramian @ value)).min() < 0.99:
            raise SolverFailure(
                f"solver status {self.problem.status!r} with a solution that violates the "
                "bargaining constraints"
            )
        return value


class NashMTL(Aggregator):
    r"""Nash-MTL: the update on which the objectives agree as players of a bargaining game.

    The weights :math:`\alpha > 0` solve the Nash bargaining condition
    :math:`\alpha_i (K \alpha)_i = 1` for every objective i, with the scale-free Gramian
    :math:`K = G / \|G\|_F`, so that :math:`d = J^\top \alpha` maximises
    :math:`\sum_i \log(g_i \cdot d)` over the ball of radius :math:`\|d\|`. They are
    found by the paper's sequential convex procedure (at most ``optim_niter`` steps, solved
    with ``cvxpy`` and ECOS, starting from the previous weights): each step solves

    .. math::

        \min_\alpha \ \mathbb{1}^\top K \alpha + \nabla\varphi(\alpha_t)^\top \alpha
        \quad \text{s.t.} \quad \log \alpha_i + \log (K\alpha)_i \ge 0 \ \forall i,

    where :math:`\varphi(\alpha) = \sum_i \log \alpha_i + \log (K\alpha)_i` is linearised at
    the previous iterate :math:`\alpha_t` (when :math:`\alpha_t` is infeasible, i.e. some
    :math:`(K\alpha_t)_i \le 0`, the linear term is dropped for that step, which yields a
    feasible point).

    The steps are computed in the equivalent variables
    :math:`\beta_i = \alpha_i \|g_i\| / \sqrt{\|G\|_F}`, for which the condition reads
    :math:`\beta_i (C\beta)_i = 1` with C the Gramian of the normalised rows: the solution is
    the same, but rows that differ by many orders of magnitude stay well-conditioned. The first
    call starts from :math:`\beta = \mathbb{1}`, later ones from the last weights (and from
    :math:`\beta = \mathbb{1}` if that warm start fails at once). The procedure stops early
    once :math:`\|C\beta - 1/\beta\| < 10^{-3}` or the iterates move by less than
    :math:`10^{-6}`. Rows that are exactly zero take no part in the bargaining.

    The weights are recomputed every ``update_weights_every`` calls and reused in between; if
    ``max_norm > 0`` and :math:`\|J^\top\alpha\| >` ``max_norm``, α is rescaled so that the norm
    equals ``max_norm``. The output is :math:`J^\top\alpha`.

    The aggregator is stateful: the last weights (buffer ``weights``, starting at ones) and the
    number of calls (buffer ``step``) are saved by ``state_dict``, so a resumed run continues
    identically; :meth:`reset` starts afresh. When the solver fails, a warning (once per
    instance) gives the reason and the weights used instead (the last ones that were found). A
    non-finite Gramian gives a NaN output and leaves the state unchanged. Not differentiable.
    From "Multi-Task Learning as a Bargaining Game" (Navon et al., ICML 2022).

    Args:
        n_tasks: the number of objectives m (rows of the Jacobian).
        max_norm: the largest norm of the output; 0 disables the rescaling.
        update_weights_every: the weights are recomputed on one call out of this many.
        optim_niter: the largest number of steps of the sequential convex procedure.

    Raises:
        ImportError: at construction, when ``cvxpy`` or ``ecos`` is not installed (install
            the extra: ``pip install "jdoptim[nash_mtl]"``).

    Example:
        >>> import torch
        >>> from jdoptim.aggregation import NashMTL
        >>> aggregator = NashMTL(n_tasks=2, max_norm=0.0)
        >>> update = aggregator(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        >>> [round(value, 2) for value in update.tolist()]  # 2.0305…: solver-dependent digits
        [2.03, 2.03]
    """

    differentiable = False

    weights: Tensor
    step: Tensor

    def __init__(
        self,
        n_tasks: int,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
    ) -> None:
        super().__init__()
        _check_int("n_tasks", n_tasks, 1)
        check_non_negative("max_norm", max_norm)
        _check_int("update_weights_every", update_weights_every, 1)
        _check_int("optim_niter", optim_niter, 1)
        _require_solvers()
        self.n_tasks = n_tasks
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.register_buffer("weights", torch.ones(n_tasks, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._warned = False
        self._programs: dict[int, _BargainingStep] = {}

    def reset(self) -> None:
        """Forgets the last weights (back to ones) and the number of calls."""
        self.weights.fill_(1.0)
        self.step.zero_()

    def forward(self, matrix: Tensor, /) -> Tensor:
        m = matrix.shape[0]
        if m != self.n_tasks:
            raise ValueError(
                f"`n_tasks` = {self.n_tasks} must equal the number of rows of the matrix, but "
                f"got a matrix of shape {list(matrix.shape)} (weights of shape "
                f"{list(self.weights.shape)})."
            )
        if int(self.step) % self.update_weights_every == 0:
            # In float64: J Jᵀ of a float32 J with entries around 1e19 would overflow float32
            # (and the products of float32 entries are exact in float64).
            wide = matrix.to(torch.float64)
            gramian = (wide @ wide.T).to(device="cpu").numpy(force=True)
            if not np.isfinite(gramian).all():
                # Let the caller (e.g. GradScaler) see the non-finite input; keep the state.
                return torch.full_like(matrix[0], float("nan"))
            new_weights = self._bargain(gramian)
            self.weights.copy_(torch.from_numpy(new_weights))
        self.step += 1
        weights = self.weights.to(device=matrix.device, dtype=matrix.dtype)
        output = weights @ matrix
        if self.max_norm > 0:
            norm = torch.linalg.vector_norm(output)
            output = output * torch.where(norm > self.max_norm, self.max_norm / norm, 1.0)
        return output

    def _bargain(self, gramian: np.ndarray) -> np.ndarray:
        """The new weights, from the previous ones by the sequential convex procedure."""
        weights: np.ndarray = self.weights.detach().to("cpu", torch.float64).numpy().copy()
        if not (np.isfinite(weights).all() and (weights > 0).all()):
            weights = np.ones(self.n_tasks)
        active = np.diagonal(gramian) > 0
        if not active.any():
            return weights  # All rows are zero: any weights give a zero output.
        sub_gramian = gramian[np.ix_(active, active)]
        # αᵢ(Kα)ᵢ = 1 with K = G/‖G‖_F is solved in the variables βᵢ = αᵢ‖gᵢ‖/√‖G‖_F, for which
        # it reads βᵢ(Cβ)ᵢ = 1 with C the Gramian of the unit rows: the same solution, but
        # well-conditioned even when the rows differ by many orders of magnitude.
        row_norms = np.sqrt(np.diagonal(sub_gramian))
        cosines = sub_gramian / np.outer(row_norms, row_norms)
        scale = np.sqrt(np.linalg.norm(sub_gramian)) / row_norms
        size = int(active.sum())
        program = self._programs.get(size)
        if program is None:
            program = self._programs[size] = _BargainingStep(size)
        fresh_start = np.ones(size)
        # The first call starts from β = 1; later ones from the last weights (warm start), and
        # from β = 1 again if the warm start fails at once.
        starts = [fresh_start] if int(self.step) == 0 else [weights[active] / scale, fresh_start]
        for start in starts:
            iterate, failure = self._iterate(program, cosines, start)
            if failure is None or failure[0] > 0:
                break
        if failure is not None:
            used = weights.copy()
            if failure[0] > 0:
                used[active] = iterate * scale
            self._warn(failure[1], failure[0], used)
        if failure is None or failure[0] > 0:
            weights[active] = iterate * scale
        return weights

    def _iterate(
        self, program: _BargainingStep, cosines: np.ndarray, start: np.ndarray
    ) -> tuple[np.ndarray, tuple[int, str] | None]:
        """Runs the convex steps from ``start``: last iterate, and (step, reason) of a failure."""
        iterate = start
        for iteration in range(self.optim_niter):
            try:
                solution = program.solve(cosines, iterate)
            except SolverFailure as failure:
                return iterate, (iteration, str(failure))
            moved = np.linalg.norm(solution - iterate)
            iterate = solution
            residual = np.linalg.norm(cosines @ iterate - 1.0 / iterate)
            if residual < 1e-3 or moved < 1e-6:
                break
        return iterate, None

    def _warn(self, reason: str, iteration: int, used: np.ndarray) -> None:
        if self._warned:
            return
        self._warned = True
        origin = "the previous weights" if iteration == 0 else "the last iterate"
        warnings.warn(
            f"NashMTL: the convex solver failed at step {iteration + 1} of {self.optim_niter} "
            f"({reason}); using {origin} instead: {np.round(used, 4).tolist()}. This warning "
            "is shown once per NashMTL instance.",
            RuntimeWarning,
            stacklevel=5,
        )

    def __getstate__(self) -> dict[str, Any]:
        # The cached cvxpy programs are rebuilt on demand; they need not be copied or pickled.
        state: dict[str, Any] = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state["_programs"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_tasks={self.n_tasks}, max_norm={self.max_norm!r}, "
            f"update_weights_every={self.update_weights_every}, "
            f"optim_niter={self.optim_niter})"
        )
