"""``JacobianOptimizer``: Jacobian descent as a drop-in ``torch.optim`` optimizer."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._shared_random import SharedRandomness
from .aggregation import Aggregator, Flattening, GeneralizedWeighting, Weighting
from .aggregation._bases import GramianWeightedAggregator
from .aggregation._weights import aggregate_with_weights
from .autojac._engine import (
    as_one_matrix,
    as_tensors,
    check_multipliers,
    check_parallel_chunk_size,
    check_require_grad,
    compute_jacobians,
    leaves_in_order_of_first_use,
)

__all__ = ["GroupDiagnostics", "JacobianOptimizer", "NonFiniteGradientError"]

Losses = Tensor | Sequence[Tensor]

# Torch optimizers whose ``step(closure)`` evaluates the closure once, before changing anything:
# a failure inside the closure leaves them untouched, so no snapshot is needed to undo it.
_CLOSURE_ONCE = tuple(
    getattr(torch.optim, name)
    for name in (
        "SGD",
        "Adam",
        "AdamW",
        "Adamax",
        "Adagrad",
        "Adadelta",
        "Adafactor",
        "ASGD",
        "NAdam",
        "RAdam",
        "RMSprop",
        "Rprop",
        "SparseAdam",
    )
    if hasattr(torch.optim, name)
)


class NonFiniteGradientError(ValueError):
    """Raised by :meth:`JacobianOptimizer.step` instead of applying non-finite gradients.

    Non-finite gradients usually come from an overflow (e.g. float16 losses). Under
    :class:`torch.amp.GradScaler`, the scaler detects them and skips the step itself, so this
    error is only raised when ``step`` is called without a scaler. Parameters, gradients and the
    optimizer's state are left as they were before the call.

    Example:
        >>> import torch
        >>> from jdoptim import JacobianOptimizer, NonFiniteGradientError
        >>> from jdoptim.aggregation import Mean
        >>> weight = torch.nn.Parameter(torch.ones(2))
        >>> opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1), Mean())
        >>> try:
        ...     opt.step([weight.sum() * float("inf"), weight.sum()])
        ... except NonFiniteGradientError:
        ...     print("refused:", weight.tolist())
        refused: [1.0, 1.0]
    """


class GroupDiagnostics(NamedTuple):
    """Conflict diagnostics of one parameter group, from the Gramian of its Jacobian.

    Attributes:
        cosine_similarities: ``[m, m]``, the cosine similarity between the gradients of every
            pair of objectives (0 when one of them is zero).
        n_conflicting_pairs: the number of pairs ``i < j`` whose gradients have a negative
            inner product.
    """

    cosine_similarities: Tensor
    n_conflicting_pairs: int


class _GramianEngine(Protocol):
    """What Gramian mode needs of an engine (:class:`jdoptim.autogram.Engine`)."""

    def compute_gramian(self, output: Tensor, /) -> Tensor: ...


class _NonFiniteGramian(Exception):
    """Internal: the Gramian given to a weighting is not finite; the aggregation is skipped."""


class _Runtime:
    """Mutable per-step records, kept in one object so that every view of the optimizer shares
    them (PyTorch Lightning wraps optimizers in objects that read, but do not write, our
    attributes)."""

    def __init__(self) -> None:
        self.last_weights: tuple[Tensor | None, ...] = ()
        self.gramians: tuple[Tensor | None, ...] = ()
        # Whether everything the last backward wrote into .grad is known to be finite.
        self.wrote_finite = False


class _Block(NamedTuple):
    """Where the Jacobian of one group's aggregated parameters lives in the flat buffer."""

    group_index: int
    params: list[Tensor]
    sizes: list[int]


class JacobianOptimizer(Optimizer):
    r"""Wraps a ``torch.optim`` optimizer so that it performs Jacobian descent.

    One step with losses :math:`L = (L_1, \dots, L_m)` computes the Jacobian :math:`J` of
    :math:`L` with respect to the parameters of each parameter group (``[m, N_g]``), turns it
    into one update :math:`A(J)` with the group's aggregator, accumulates :math:`A(J)` into
    the parameters' ``.grad`` and calls the wrapped optimizer's ``step``. With the
    :class:`~jdoptim.aggregation.Mean` aggregator this is exactly the gradient step of the mean
    loss; with :class:`~jdoptim.aggregation.UPGrad` (the default) the update decreases every
    loss to first order whenever that is possible.

    The wrapper **is** a :class:`torch.optim.Optimizer`: ``param_groups``, ``state`` and
    ``defaults`` are the wrapped optimizer's own objects, so learning-rate schedulers,
    :class:`torch.amp.GradScaler` and PyTorch Lightning work on it, and step hooks registered
    on it fire around :meth:`step`.

    **Modes.**

    - Jacobian mode (default): ``autojac.jac`` computes the Jacobian of the losses with respect
      to every parameter that the losses depend on, in one call; each group's Jacobian is
      aggregated by the group's ``"aggregator"`` (a key of the parameter group) or by
      ``aggregator``. Parameters the losses do not depend on keep their ``.grad`` (like
      ``loss.backward()``); a loss that does not depend on some parameters gives zero rows.
    - Multi-task mode (``backward(losses, features=...)``): the parameters used to compute
      ``features`` (shared) get the aggregated Jacobian of the losses, computed through the
      features; the other parameters (task-specific) get the plain gradient of the sum of the
      losses.
    - Gramian mode (``engine`` given): the Gramian :math:`G = J J^\top` comes from
      ``engine.compute_gramian(losses)`` without forming :math:`J`, the weights
      :math:`w = W(G)` from ``weighting`` (else ``aggregator.gramian_weighting``, wrapped in
      :class:`~jdoptim.aggregation.Flattening` for losses with several dimensions), and
      ``losses.backward(w)`` writes :math:`J^\top w` into ``.grad``. One weighting serves all
      parameter groups. The Gramian covers the engine's parameters only: parameters of the
      optimizer outside the engine's modules get :math:`J^\top w` with the same weights.
      A list of losses is stacked (or, for different shapes, flattened and concatenated).

    **Mixed precision.** ``opt.backward(scaler.scale(losses)); scaler.step(opt);
    scaler.update()`` works with :class:`torch.amp.GradScaler`. A non-finite Jacobian (or
    Gramian) is never given to an aggregator: the group's ``.grad`` becomes NaN, so the scaler
    skips the step and lowers its scale. Without a scaler, :meth:`step` refuses non-finite
    gradients with :class:`NonFiniteGradientError`.

    **Failure safety.** Everything is computed before anything is written: when
    :meth:`backward` or :meth:`step` raises, the parameters, their ``.grad``, the wrapped
    optimizer's state and the aggregators' state are as before the call. (Errors raised by the
    wrapped optimizer's own ``step`` are its own; torch's optimizers validate before updating.)

    **Distributed** (see :doc:`/examples/distributed`). With ``process_group``, Jacobian mode
    averages the Jacobians (and, in multi-task mode, the task-specific gradients) across the
    ranks with one ``all_reduce`` of one flat buffer per step, before aggregating, so that every
    rank aggregates the same matrix: with mean-reduced losses on equal shards of the batch, this
    is the step of one process holding the whole batch, and the parameters stay bit-identical
    across ranks. Every parameter requiring grad then gets a Jacobian (zero where unused) so
    that all ranks share the buffer's layout. Aggregators that draw random numbers (e.g.
    :class:`~jdoptim.aggregation.Random`, :class:`~jdoptim.aggregation.GradDrop`,
    :class:`~jdoptim.aggregation.PCGrad`) draw the same ones on every rank: the aggregation runs
    under :func:`torch.random.fork_rng`, with torch's global generator seeded from a generator
    shared by the ranks, itself seeded once, at the first step, with rank 0's
    :func:`torch.initial_seed` (one broadcast; no communication in later steps). Its state is
    saved by :meth:`state_dict`, so a resumed run draws what the uninterrupted one would; the
    global generators (dropout, data order) are left untouched.

    A model wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (DDP) works as it
    is: Jacobian mode differentiates with :func:`torch.autograd.grad`, which does not run the
    gradient-accumulation hooks through which DDP reduces gradients, so DDP's reducer stays
    idle and the optimizer's ``all_reduce`` is the only gradient communication (DDP still
    broadcasts the parameters at construction and the buffers at each forward). Running the
    forward under ``ddp.no_sync()`` also skips the reducer's per-iteration bookkeeping (and,
    with ``find_unused_parameters=True``, its search of the graph); it is optional.
    ``static_graph=True`` brings nothing here (its first iteration runs DDP's delayed reduction
    for nothing).

    Gramian mode does not use ``process_group``: ``losses.backward(weights)`` runs DDP's hooks,
    which average :math:`J_r^\top w_r` over the ranks :math:`r`, where :math:`w_r` comes from
    the Gramian of rank :math:`r`'s own losses. This is *rank-local* Jacobian descent, not the
    single-process step: the weights never see the inner products between the gradients of
    losses held by different ranks, so conflicts across ranks are not resolved (for a weighting
    that ignores the Gramian, such as :class:`~jdoptim.aggregation.Mean`, the two coincide).
    Do not combine it with DDP's ``static_graph=True``: its first-iteration reduction would run
    during the Gramian's backward pass, before the weighted one, and the ranks would diverge.

    Args:
        optimizer: the optimizer to wrap (SGD, Adam, AdamW, LBFGS, custom ones). Its parameter
            groups may carry an ``"aggregator"`` key.
        aggregator: the aggregator of the groups without an ``"aggregator"`` key; ``None``
            means :class:`~jdoptim.aggregation.UPGrad`.
        weighting: Gramian mode only: the :class:`~jdoptim.aggregation.Weighting` (or
            :class:`~jdoptim.aggregation.GeneralizedWeighting`) applied to the Gramian; default
            ``aggregator.gramian_weighting``.
        engine: an :class:`jdoptim.autogram.Engine` over the model; selects Gramian mode.
        parallel_chunk_size: rows of the Jacobian computed per vectorised backward pass
            (see :func:`jdoptim.autojac.jac`); ``None`` means all at once.
        process_group: a ``torch.distributed`` process group over which Jacobian mode averages
            the Jacobian; ``None`` for one process.

    Attributes:
        record_gramians: when ``True``, groups whose aggregator is not Gramian-weighted also
            record their Gramian (one extra :math:`J J^\top`) for :meth:`diagnostics`.

    Example:
        >>> import torch
        >>> from jdoptim import JacobianOptimizer
        >>> from jdoptim.aggregation import UPGrad
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), UPGrad())
        >>> x, y = torch.randn(8, 3), torch.randn(8, 2)
        >>> def compute_losses():
        ...     return ((model(x) - y) ** 2).mean(dim=0)  # one loss per output
        >>> [round(loss, 2) for loss in compute_losses().tolist()]
        [1.41, 1.84]
        >>> for _ in range(20):
        ...     opt.zero_grad()
        ...     opt.step(compute_losses())
        >>> [round(loss, 2) for loss in compute_losses().tolist()]
        [0.74, 1.44]
        >>> opt.last_weights[0].shape
        torch.Size([2])
    """

    def __init__(
        self,
        optimizer: Optimizer,
        aggregator: Aggregator | None = None,
        *,
        weighting: Weighting | GeneralizedWeighting | None = None,
        engine: _GramianEngine | None = None,
        parallel_chunk_size: int | None = None,
        process_group: Any = None,
    ) -> None:
        if isinstance(optimizer, JacobianOptimizer) or not isinstance(optimizer, Optimizer):
            raise TypeError(
                "`optimizer` must be a torch.optim.Optimizer (not a JacobianOptimizer), but got "
                f"{type(optimizer).__name__}."
            )
        if aggregator is None:
            from .aggregation import UPGrad

            aggregator = UPGrad()
        _check_aggregator(aggregator, "aggregator")
        if engine is not None and not callable(getattr(engine, "compute_gramian", None)):
            raise TypeError(
                "`engine` must be a jdoptim.autogram.Engine (an object with `compute_gramian`), "
                f"but got {type(engine).__name__}."
            )
        if weighting is not None:
            if engine is None:
                raise ValueError(
                    "`weighting` is only used in Gramian mode: pass `engine` too, or drop "
                    f"`weighting` and pass an aggregator, but got weighting={weighting!r} and "
                    "engine=None."
                )
            if not isinstance(weighting, (Weighting, GeneralizedWeighting)):
                raise TypeError(
                    "`weighting` must be a jdoptim.aggregation.Weighting or GeneralizedWeighting, "
                    f"but got {type(weighting).__name__}."
                )
        elif engine is not None and not isinstance(
            getattr(aggregator, "gramian_weighting", None), Weighting
        ):
            raise ValueError(
                f"`aggregator` must have a Gramian weighting in Gramian mode (with `engine`), but "
                f"{aggregator!r} has none. Use a Gramian-weighted aggregator such as UPGrad or "
                "Mean, pass `weighting`, or drop `engine` to use Jacobian mode."
            )
        check_parallel_chunk_size(parallel_chunk_size)
        self._inner = optimizer
        self._aggregator = aggregator
        self._weighting = weighting
        self._engine = engine
        self._parallel_chunk_size = parallel_chunk_size
        self._process_group = process_group
        self._shared_random = None if process_group is None else SharedRandomness(process_group)
        self._runtime = _Runtime()
        self.record_gramians = False
        for index, group in enumerate(optimizer.param_groups):
            self._check_group(group, f"`optimizer` parameter group {index}")
        _check_disjoint(optimizer.param_groups, "optimizer")
        self._setup()

    def _setup(self) -> None:
        """Hook dictionaries of :class:`torch.optim.Optimizer` and the inner optimizer's hooks."""
        self._optimizer_step_pre_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_step_post_hooks: dict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._warned_capturable_if_run_uncaptured = True
        self._patch_step_function()
        self._keep_aggregators_across_loads(self._inner)

    @staticmethod
    def _keep_aggregators_across_loads(inner: Optimizer) -> None:
        """Keeps ``"aggregator"`` keys out of the inner state dict and alive across its loads.

        Aggregators are modules: they are not saved in the parameter groups (so that
        ``torch.load(weights_only=True)`` works) and loading a state dict keeps the current ones.
        """
        kept: list[Any] = []

        def strip(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
            groups = [
                {key: value for key, value in group.items() if key != "aggregator"}
                for group in state_dict["param_groups"]
            ]
            return {**state_dict, "param_groups": groups}

        def remember(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
            kept[:] = [group.get("aggregator") for group in optimizer.param_groups]

        def restore(optimizer: Optimizer) -> None:
            for group, aggregator in zip(optimizer.param_groups, kept, strict=False):
                group.pop("aggregator", None)
                if aggregator is not None:
                    group["aggregator"] = aggregator
            kept.clear()

        inner.register_state_dict_post_hook(strip)
        inner.register_load_state_dict_pre_hook(remember)
        inner.register_load_state_dict_post_hook(restore)

    # -- the attributes of torch.optim.Optimizer are the wrapped optimizer's --------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's parameter groups (the same list)."""
        return self._inner.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._inner.param_groups = value

    @property
    def state(self) -> defaultdict[Tensor, Any]:
        """The wrapped optimizer's per-parameter state (the same dict)."""
        return self._inner.state

    @state.setter
    def state(self, value: defaultdict[Tensor, Any]) -> None:
        self._inner.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        """The wrapped optimizer's defaults (the same dict)."""
        return self._inner.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._inner.defaults = value

    @property
    def optimizer(self) -> Optimizer:
        """The wrapped optimizer."""
        return self._inner

    @property
    def aggregator(self) -> Aggregator:
        """The aggregator of the parameter groups without an ``"aggregator"`` key."""
        return self._aggregator

    @property
    def last_weights(self) -> tuple[Tensor | None, ...]:
        """The weights used by the last :meth:`backward`, one entry per parameter group.

        ``None`` for a group whose aggregator is not weighted or that got no Jacobian; in
        Gramian mode every group holds the same weights, of the shape of the losses.
        """
        return self._runtime.last_weights

    # -- public API ------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a parameter group to the wrapped optimizer.

        The group may carry an ``"aggregator"`` key (an
        :class:`~jdoptim.aggregation.Aggregator`) used for its Jacobian instead of the default
        aggregator (not in Gramian mode, where one weighting serves all groups).
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"`param_group` must be a dict, but got {type(param_group).__name__}.")
        self._check_group(param_group, "`param_group`")
        params = param_group.get("params")
        new = [params] if isinstance(params, Tensor) else list(params or [])
        existing = {id(p) for group in self.param_groups for p in group["params"]}
        if any(isinstance(p, Tensor) and id(p) in existing for p in new):
            raise ValueError(
                "`param_group` must contain parameters that are in no other group, but some of "
                "its parameters already appear in another parameter group."
            )
        self._inner.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Resets ``.grad`` (through the wrapped optimizer) and ``.jac`` of every parameter."""
        self._inner.zero_grad(set_to_none)
        for group in self.param_groups:
            for param in group["params"]:
                jacobian = getattr(param, "jac", None)
                if jacobian is None:
                    continue
                if set_to_none or not isinstance(jacobian, Tensor):
                    del param.jac
                else:
                    with torch.no_grad():
                        jacobian.zero_()

    def step(  # type: ignore[override]
        self,
        losses: Losses | Callable[[], Any] | None = None,
        /,
        closure: Callable[[], Any] | None = None,
        **backward_kwargs: Any,
    ) -> Any:
        """Performs one optimisation step.

        - ``step(losses, **backward_kwargs)``: :meth:`backward` then the wrapped step;
        - ``step()``: the wrapped step on the gradients already there (what
          ``GradScaler.step(opt)`` calls);
        - ``step(closure=closure)`` (or torch's ``step(closure)``): the wrapped step,
          re-evaluating ``closure`` as often as it requires (LBFGS: several times). When the
          closure returns tensors requiring grad (the losses), they are back-propagated by
          :meth:`backward` (with ``backward_kwargs``) and their detached sum is returned to the
          wrapped optimizer; when it returns ``None`` (or values not requiring grad), the
          gradients it left are used as they are. As in torch, the closure should call
          :meth:`zero_grad`.

        So that an error leaves everything as it was, a step with a closure copies the
        parameters, gradients and optimizer state beforehand when the wrapped optimizer may
        evaluate the closure after changing the parameters (LBFGS, custom optimizers); torch's
        other optimizers evaluate it once, first, and need no copy.

        Raises:
            NonFiniteGradientError: some gradient is infinite or NaN (use a
                :class:`torch.amp.GradScaler` to skip such steps instead). Nothing is changed.

        Returns:
            What the wrapped optimizer's ``step`` returns.
        """
        if callable(losses) and not isinstance(losses, Tensor) and closure is None:
            # ``opt.step(closure)``: torch's positional closure, e.g. ``LBFGS``'s idiom.
            losses, closure = None, losses
        if closure is not None:
            if losses is not None:
                raise ValueError(
                    "`losses` and `closure` cannot both be given: return the losses from the "
                    "closure instead."
                )
            return self._step_with_closure(closure, backward_kwargs)
        if losses is None:
            if backward_kwargs:
                raise TypeError(
                    f"`step` got backward arguments {sorted(backward_kwargs)} but no `losses`."
                )
            self._check_finite_grads()
            return self._inner.step()
        undo = self._backward_and_check(losses, backward_kwargs)
        try:
            return self._inner.step()
        except BaseException:
            undo()  # the wrapped step failed: the .grad written by the backward go too
            raise

    def _backward_and_check(
        self, losses: Any, backward_kwargs: dict[str, Any]
    ) -> Callable[[], None]:
        """:meth:`backward`, then refuses non-finite gradients, undoing the backward if so.

        When every ``.grad`` was None before and the backward knows that what it wrote is
        finite (it saw finite Gramians and weights), no pass over the gradients is needed.
        Returns a function that undoes the backward (``.grad`` and the aggregators' state).
        """
        grads = _grad_references(self.param_groups)
        fresh = all(grad is None for _, grad in grads)
        aggregator_states = self._snapshot_aggregators()

        def undo() -> None:
            _restore_grads(grads)
            self._restore_aggregators(aggregator_states)

        self.backward(losses, **backward_kwargs)
        if fresh and self._runtime.wrote_finite:
            return undo
        try:
            self._check_finite_grads()
        except NonFiniteGradientError:
            undo()
            raise
        return undo

    def backward(
        self,
        losses: Losses,
        /,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        grad_tensors: Tensor | Sequence[Tensor] | None = None,
        retain_graph: bool = False,
    ) -> None:
        """Accumulates the aggregated Jacobian of ``losses`` into the parameters' ``.grad``.

        Args:
            losses: a tensor or a sequence of tensors; every element is one objective (one
                row of the Jacobian), unless ``grad_tensors`` is given.
            features: multi-task mode: the shared representation(s) computed by the shared
                parameters and used by the losses (Jacobian mode only).
            grad_tensors: one tensor per loss, of that loss's shape: loss ``i`` then gives one
                row, the gradient of ``(grad_tensors[i] * losses[i]).sum()`` (like
                ``torch.autograd.backward``). Jacobian mode only.
            retain_graph: keep the graph for another backward pass.

        The weights used are then in :attr:`last_weights`. Nothing is written when an error
        is raised; a non-finite Jacobian writes NaN gradients (see the class documentation).
        The gradients are accumulated like ``torch.autograd.backward`` does; ``.jac`` fields
        are neither read nor written (the Jacobian goes straight to ``.grad``). So two calls
        before one step (gradient accumulation over micro-batches) add two aggregated updates,
        :math:`A(J_1) + A(J_2)`, which for a non-linear aggregator such as UPGrad is not
        :math:`A(J_1 + J_2)`; to aggregate the accumulated Jacobian instead, call
        :func:`jdoptim.autojac.backward` on each micro-batch, then
        :func:`jdoptim.autojac.jac_to_grad` once per parameter group, then ``step()``.
        """
        if not isinstance(retain_graph, bool):
            raise TypeError(f"`retain_graph` must be a bool, but got {retain_graph!r}.")
        loss_list = _as_losses(losses)
        if self._engine is not None:
            if features is not None or grad_tensors is not None:
                name = "features" if features is not None else "grad_tensors"
                raise ValueError(
                    f"`{name}` is not supported in Gramian mode (with `engine`); drop it or use "
                    "Jacobian mode."
                )
            self._gramian_backward(loss_list, retain_graph)
        elif features is None:
            self._jacobian_backward(loss_list, grad_tensors, retain_graph)
        else:
            self._mtl_backward(loss_list, features, grad_tensors, retain_graph)

    def diagnostics(self) -> tuple[GroupDiagnostics | None, ...]:
        """Conflict diagnostics of the last :meth:`backward`, one entry per parameter group.

        Computed on request from the Gramians recorded during :meth:`backward` (recorded for
        free by Gramian-weighted aggregators and in Gramian mode; other aggregators record one
        only when :attr:`record_gramians` is set). ``None`` for groups without a Gramian.

        Example:
            >>> import torch
            >>> from jdoptim import JacobianOptimizer
            >>> from jdoptim.aggregation import UPGrad
            >>> weight = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
            >>> opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1), UPGrad())
            >>> opt.backward([weight[0] - weight[1], weight[1] - weight[0], weight.sum()])
            >>> (diagnostics,) = opt.diagnostics()
            >>> diagnostics.n_conflicting_pairs
            1
            >>> diagnostics.cosine_similarities
            tensor([[ 1., -1.,  0.],
                    [-1.,  1.,  0.],
                    [ 0.,  0.,  1.]])
        """
        return tuple(
            None if gramian is None else _diagnose(gramian) for gramian in self._runtime.gramians
        )

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus the state of the aggregators and weighting.

        Made only of tensors, numbers, strings and containers, so that
        ``torch.load(path, weights_only=True)`` reads it back. Aggregators are not saved in the
        parameter groups; their state (e.g. the weights of
        :class:`~jdoptim.aggregation.NashMTL`) is under the key ``"jdoptim"``.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict: dict[str, Any] = dict(self._inner.state_dict())
        state_dict["jdoptim"] = {
            "aggregator": dict(self._aggregator.state_dict()),
            "weighting": None if self._weighting is None else dict(self._weighting.state_dict()),
            "group_aggregators": {
                index: dict(group["aggregator"].state_dict())
                for index, group in enumerate(self.param_groups)
                if "aggregator" in group
            },
        }
        if self._shared_random is not None:
            state_dict["jdoptim"]["shared_rng_state"] = self._shared_random.state()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict made by :meth:`state_dict` (or by the wrapped optimizer).

        The aggregators stay the current objects (so hooks registered on them stay); their
        state is loaded from the ``"jdoptim"`` entry when present. On error nothing changes.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"`state_dict` must be a dict, but got {type(state_dict).__name__}.")
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        extra = state_dict.pop("jdoptim", None)
        modules = self._stateful_modules()
        loads: list[tuple[torch.nn.Module, dict[str, Any]]] = []
        if extra is not None:
            loads.append((self._aggregator, extra["aggregator"]))
            if self._weighting is not None and extra.get("weighting") is not None:
                loads.append((self._weighting, extra["weighting"]))
            for index, saved in extra.get("group_aggregators", {}).items():
                if index >= len(self.param_groups) or "aggregator" not in self.param_groups[index]:
                    raise ValueError(
                        "`state_dict` holds the state of an aggregator of parameter group "
                        f"{index}, but this optimizer has no aggregator for that group."
                    )
                loads.append((self.param_groups[index]["aggregator"], saved))
        previous_groups, previous_state = self._inner.param_groups, self._inner.state
        previous_modules = [_clone_state(module) for module in modules]
        shared = self._shared_random
        previous_rng = None if shared is None else shared.state()
        try:
            self._inner.load_state_dict(state_dict)
            for module, saved in loads:
                module.load_state_dict(saved)
            if shared is not None and extra is not None and "shared_rng_state" in extra:
                shared.load_state(extra["shared_rng_state"])
        except BaseException:
            self._inner.param_groups, self._inner.state = previous_groups, previous_state
            for module, saved in zip(modules, previous_modules, strict=True):
                module.load_state_dict(saved)
            if shared is not None:
                shared.load_state(previous_rng)
            raise
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "_inner": self._inner,
            "_aggregator": self._aggregator,
            "_weighting": self._weighting,
            "_engine": self._engine,
            "_parallel_chunk_size": self._parallel_chunk_size,
            "_process_group": self._process_group,
            "_shared_random": self._shared_random,
            "record_gramians": self.record_gramians,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._runtime = _Runtime()
        self._setup()

    def __repr__(self) -> str:
        inner = "\n    ".join(repr(self._inner).splitlines())
        parts = [inner, f"aggregator={self._aggregator!r}"]
        if self._engine is not None:
            parts.append(f"weighting={self._gramian_weighting()!r}")
            parts.append(f"engine={self._engine!r}")
        return "JacobianOptimizer(\n    " + ",\n    ".join(parts) + "\n)"

    # -- checks -----------------------------------------------------------------------------------

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        if "aggregator" not in group:
            return
        _check_aggregator(group["aggregator"], f"{where}'s 'aggregator'")
        if self._engine is not None:
            raise ValueError(
                f"{where} has an 'aggregator' key, but in Gramian mode (with `engine`) one "
                "weighting serves all groups: remove the key or use Jacobian mode."
            )

    def _check_finite_grads(self) -> None:
        grads = [
            param.grad
            for group in self.param_groups
            for param in group["params"]
            if param.grad is not None
        ]
        if not _all_finite(grads):
            raise NonFiniteGradientError(
                "The gradients hold inf or NaN values (an overflow, e.g. of float16 losses), so "
                "`step` did not apply them; parameters are unchanged. Use "
                "torch.amp.GradScaler (`opt.backward(scaler.scale(losses)); scaler.step(opt)`) "
                "to skip such steps automatically, or lower the learning rate / loss scale."
            )

    # -- Jacobian mode ----------------------------------------------------------------------------

    def _group_params(self) -> list[list[Tensor]]:
        """The parameters requiring grad of each group, checking that no group shares one."""
        seen: set[int] = set()
        groups: list[list[Tensor]] = []
        for group in self.param_groups:
            params = []
            for param in group["params"]:
                if id(param) in seen:
                    raise ValueError(
                        "`optimizer` must have every parameter in only one parameter group, but a "
                        f"parameter of shape {list(param.shape)} appears in several."
                    )
                seen.add(id(param))
                if param.requires_grad:
                    params.append(param)
            groups.append(params)
        return groups

    def _blocks(
        self,
        groups: list[list[Tensor]],
        used: set[int] | None,
        exclude: frozenset[int] | set[int] = frozenset(),
    ) -> list[_Block]:
        blocks = []
        for index, params in enumerate(groups):
            chosen = [p for p in params if (used is None or id(p) in used) and id(p) not in exclude]
            blocks.append(_Block(index, chosen, [p.numel() for p in chosen]))
        return blocks

    def _jacobian_backward(
        self,
        losses: list[Tensor],
        grad_tensors: Tensor | Sequence[Tensor] | None,
        retain_graph: bool,
    ) -> None:
        jac_outputs = _rows_of_grad_tensors(losses, grad_tensors)
        groups = self._group_params()
        used = None if self._process_group is not None else _leaf_ids(losses)
        blocks = self._blocks(groups, used)
        inputs = [p for block in blocks for p in block.params]
        if not inputs:
            raise ValueError(
                "`losses` must depend on some parameter of the optimizer that requires grad, but "
                "they depend on none of them."
            )
        jacobians = compute_jacobians(
            losses,
            inputs,
            jac_outputs,
            retain_graph,
            self._parallel_chunk_size,
            shared_buffer=True,
        )
        buffer, views = _flatten(jacobians, blocks, _rows(losses, jac_outputs), [])
        self._all_reduce(buffer)
        self._aggregate_and_write(blocks, views, buffer)

    def _mtl_backward(
        self,
        losses: list[Tensor],
        features: Tensor | Sequence[Tensor],
        grad_tensors: Tensor | Sequence[Tensor] | None,
        retain_graph: bool,
    ) -> None:
        feature_list = as_tensors(features, "features")
        check_require_grad(feature_list, "features", " (compute it from the shared parameters)")
        jac_outputs = _rows_of_grad_tensors(losses, grad_tensors)
        groups = self._group_params()
        task_leaves, reached = leaves_in_order_of_first_use(losses, stop_at=feature_list)
        for i, was_reached in enumerate(reached):
            if not was_reached:
                raise ValueError(
                    f"`features` must be used to compute the losses, but element {i} of shape "
                    f"{list(feature_list[i].shape)} is not used by any of them."
                )
        shared_leaves, _ = leaves_in_order_of_first_use(feature_list)
        shared_ids = {id(leaf) for leaf in shared_leaves}
        task_ids = {id(leaf) for leaf in task_leaves} - shared_ids
        if self._process_group is None:
            shared_blocks = self._blocks(groups, shared_ids)
        else:
            # Every parameter gets a place in the buffer (zero where unused), so that all ranks
            # share its layout.
            shared_blocks = self._blocks(groups, None, exclude=task_ids)
        task_params = [p for params in groups for p in params if id(p) in task_ids]
        if not task_params and not any(block.params for block in shared_blocks):
            raise ValueError(
                "`losses` must depend on some parameter of the optimizer that requires grad, but "
                "they depend on none of them."
            )
        first = compute_jacobians(
            losses,
            [*feature_list, *task_params],
            jac_outputs,
            True,
            self._parallel_chunk_size,
        )
        feature_jacobians, task_jacobians = first[: len(feature_list)], first[len(feature_list) :]
        del first
        shared_params = [p for block in shared_blocks for p in block.params]
        shared_jacobians: list[Tensor] = []
        if shared_params:
            shared_jacobians = compute_jacobians(
                feature_list,
                shared_params,
                feature_jacobians,
                retain_graph,
                self._parallel_chunk_size,
                shared_buffer=True,
            )
        del feature_jacobians
        m = _rows(losses, jac_outputs)
        task_updates: list[tuple[Tensor, Tensor]] = []
        if self._process_group is None:
            buffer, views = _flatten(shared_jacobians, shared_blocks, m, [])
            for param, jacobian in zip(task_params, task_jacobians, strict=True):
                task_updates.append((param, jacobian.reshape(m, -1).sum(dim=0)))
        else:
            # The task-specific gradients travel in the same buffer: one collective per step.
            buffer, views = _flatten(shared_jacobians, shared_blocks, m, task_params)
            task_size = sum(p.numel() for p in task_params)
            task_grads = buffer[buffer.numel() - task_size :]
            offset = 0
            for param, jacobian in zip(task_params, task_jacobians, strict=True):
                size = param.numel()
                torch.sum(
                    jacobian.reshape(m, size).to(buffer.dtype),
                    dim=0,
                    out=task_grads[offset : offset + size],
                )
                offset += size
            self._all_reduce(buffer)
            task_grads = task_grads.clone()  # does not keep the Jacobian buffer alive
            offset = 0
            for param in task_params:
                size = param.numel()
                task_updates.append((param, task_grads[offset : offset + size]))
                offset += size
        del task_jacobians
        self._aggregate_and_write(
            shared_blocks, views, buffer, task_updates, _all_finite([u for _, u in task_updates])
        )

    def _all_reduce(self, buffer: Tensor) -> None:
        if self._process_group is None:
            return
        import torch.distributed as dist

        dist.all_reduce(buffer, group=self._process_group)
        buffer.div_(dist.get_world_size(self._process_group))

    def _aggregator_of(self, group_index: int) -> Aggregator:
        aggregator = self.param_groups[group_index].get("aggregator", self._aggregator)
        return cast(Aggregator, aggregator)

    def _aggregate_and_write(
        self,
        blocks: list[_Block],
        views: list[Tensor],
        buffer: Tensor,
        extra_updates: Sequence[tuple[Tensor, Tensor]] = (),
        known_finite: bool = True,
    ) -> None:
        """Aggregates each block, then (only once everything succeeded) writes ``.grad``.

        ``known_finite`` says whether ``extra_updates`` are known to be finite.
        """
        n_groups = len(self.param_groups)
        weights: list[Tensor | None] = [None] * n_groups
        gramians: list[Tensor | None] = [None] * n_groups
        updates: list[tuple[Tensor, Tensor]] = list(extra_updates)
        snapshot = self._snapshot_aggregators()
        try:
            with self._same_randomness_on_every_rank(buffer.device):
                for block, matrix in zip(blocks, views, strict=True):
                    if not block.params:
                        continue
                    i = block.group_index
                    aggregator = self._aggregator_of(i)
                    try:
                        update, weights[i], gramians[i], finite = _aggregate(
                            aggregator, matrix, self.record_gramians
                        )
                        # In float16, w @ J of finite weights and rows can still overflow.
                        known_finite = (
                            known_finite
                            and finite
                            and all(param.dtype != torch.float16 for param in block.params)
                        )
                    except ValueError as error:
                        raise ValueError(
                            f"The aggregator {aggregator} of parameter group {block.group_index} "
                            f"rejected the Jacobian of shape {list(matrix.shape)} (one row per "
                            f"loss): {error}"
                        ) from error
                    if update.shape != (matrix.shape[1],):
                        raise ValueError(
                            f"`aggregator` {aggregator} must return a vector of shape "
                            f"[{matrix.shape[1]}], but returned shape {list(update.shape)}."
                        )
                    if _shares_memory(update, buffer):
                        update = update.clone()
                    offset = 0
                    for param, size in zip(block.params, block.sizes, strict=True):
                        updates.append((param, update[offset : offset + size]))
                        offset += size
        except BaseException:
            self._restore_aggregators(snapshot)
            raise
        with torch.no_grad():
            for param, update in updates:
                _accumulate_grad(param, update.detach().view(param.shape))
        self._runtime.last_weights = tuple(weights)
        self._runtime.gramians = tuple(gramians)
        self._runtime.wrote_finite = known_finite

    def _same_randomness_on_every_rank(self, device: torch.device) -> AbstractContextManager[Any]:
        """With a process group, the aggregators draw the same random numbers on every rank."""
        if self._shared_random is None:
            return nullcontext()
        return self._shared_random.fork(device)

    # -- Gramian mode -----------------------------------------------------------------------------

    def _gramian_weighting(self) -> Weighting | GeneralizedWeighting:
        if self._weighting is not None:
            return self._weighting
        return cast(Weighting, getattr(self._aggregator, "gramian_weighting"))  # noqa: B009

    def _gramian_backward(self, losses: list[Tensor], retain_graph: bool) -> None:
        if len(losses) == 1:
            output = losses[0]
        elif all(loss.shape == losses[0].shape for loss in losses):
            output = torch.stack(losses)
        else:
            output = torch.cat([loss.reshape(-1) for loss in losses])
        batch_dim = getattr(self._engine, "batch_dim", None)
        # Checked before a scalar loss becomes a vector of one loss: a mean-reduced loss has no
        # batch dimension.
        if batch_dim is not None and not -output.dim() <= batch_dim < output.dim():
            raise ValueError(
                f"`losses` must have the dimension `batch_dim={batch_dim}` of the engine, but "
                f"the losses have shape {list(output.shape)}. Pass losses with a batch "
                "dimension (e.g. reduction='none') or build the engine with batch_dim=None."
            )
        if output.dim() == 0:
            output = output.reshape(1)
        groups = self._group_params()
        params = [p for params in groups for p in params]
        used = _leaf_ids([output])
        inputs = [p for p in params if id(p) in used]
        if not inputs:
            raise ValueError(
                "`losses` must depend on some parameter of the optimizer that requires grad, but "
                "they depend on none of them."
            )
        assert self._engine is not None
        snapshot = self._snapshot_aggregators()
        try:
            gramian = self._engine.compute_gramian(output)
            weighting = self._gramian_weighting()
            if not isinstance(weighting, GeneralizedWeighting) and output.dim() > 1:
                weighting = Flattening(weighting)
            known_finite = bool(torch.isfinite(gramian).all())
            if known_finite:
                weights = weighting(gramian).detach()
                known_finite = bool(torch.isfinite(weights).all())
            else:
                weights = torch.full_like(output, math.nan)
            if weights.shape != output.shape:
                raise ValueError(
                    f"`weighting` must return weights of the shape of the losses "
                    f"{list(output.shape)}, but returned shape {list(weights.shape)}."
                )
            weights = weights.to(output.dtype)
            # Accumulate out of place, so that the previous .grad tensors stay intact.
            previous = [(p, p.grad) for p in inputs if p.grad is not None]
            for param, _ in previous:
                param.grad = None
            try:
                torch.autograd.backward(
                    output, grad_tensors=weights, retain_graph=retain_graph, inputs=inputs
                )
            except BaseException:
                for param in inputs:
                    param.grad = None
                raise
            finally:
                for param, grad in previous:
                    param.grad = grad if param.grad is None else grad + param.grad
        except BaseException:
            self._restore_aggregators(snapshot)
            raise
        square = gramian.reshape(output.numel(), output.numel()) if output.dim() == 1 else None
        if square is None:
            k = output.dim()
            order = list(range(k)) + list(range(2 * k - 1, k - 1, -1))
            square = gramian.permute(order).reshape(output.numel(), output.numel())
        self._runtime.last_weights = tuple(weights for _ in groups)
        self._runtime.gramians = tuple(square.detach() for _ in groups)
        # A finite Gramian only vouches for the gradients of the engine's own parameters (and
        # not in float16, where J^T w can still overflow): the others are checked by `step`.
        engine_parameters = getattr(self._engine, "_parameters", None)
        covered = isinstance(engine_parameters, dict) and all(
            id(param) in engine_parameters and param.dtype != torch.float16 for param in inputs
        )
        self._runtime.wrote_finite = known_finite and covered

    # -- closures and transactions ----------------------------------------------------------------

    def _step_with_closure(
        self, closure: Callable[[], Any], backward_kwargs: dict[str, Any]
    ) -> Any:
        if not callable(closure):
            raise TypeError(f"`closure` must be callable, but got {type(closure).__name__}.")
        full_snapshot = None if type(self._inner) in _CLOSURE_ONCE else self._snapshot()
        grads = _grad_references(self.param_groups)
        aggregator_states = self._snapshot_aggregators()

        def evaluate() -> Any:
            with torch.enable_grad():
                result = closure()
            if _requires_grad(result):
                try:
                    self._backward_and_check(result, backward_kwargs)
                except RuntimeError as error:
                    if "second time" not in str(error):
                        raise
                    raise RuntimeError(
                        "`closure` returned losses whose graph was already freed, e.g. by "
                        "`loss.backward()` inside the closure. With JacobianOptimizer, return the "
                        "losses without back-propagating them (the step back-propagates them by "
                        "Jacobian descent), or call `opt.backward(losses)` in the closure and "
                        "return detached values or None."
                    ) from error
                return torch.stack([loss.detach().sum() for loss in _as_losses(result)]).sum()
            self._check_finite_grads()
            return result

        try:
            return self._inner.step(evaluate)
        except BaseException:
            if full_snapshot is not None:
                self._restore(full_snapshot)
            else:
                _restore_grads(grads)
            self._restore_aggregators(aggregator_states)
            raise

    def _stateful_modules(self) -> list[torch.nn.Module]:
        modules: list[torch.nn.Module] = [self._aggregator]
        if self._weighting is not None:
            modules.append(self._weighting)
        for group in self.param_groups:
            aggregator = group.get("aggregator")
            if aggregator is not None and all(aggregator is not m for m in modules):
                modules.append(aggregator)
        return modules

    def _snapshot_aggregators(self) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
        """Copies of the state of the aggregators that have some (e.g. NashMTL's weights)."""
        snapshot = []
        for module in self._stateful_modules():
            if next(module.buffers(), None) is not None:
                snapshot.append((module, _clone_state(module)))
        return snapshot

    def _restore_aggregators(self, snapshot: list[tuple[torch.nn.Module, dict[str, Any]]]) -> None:
        for module, state in snapshot:
            module.load_state_dict(state)

    def _snapshot(self) -> dict[str, Any]:
        """Everything a closure-driven step may change, for optimizers that re-run closures."""
        params = [p for group in self.param_groups for p in group["params"]]
        return {
            "params": [(p, p.detach().clone()) for p in params],
            "grads": [(p, None if p.grad is None else p.grad.detach().clone()) for p in params],
            "state": {key: copy.deepcopy(value) for key, value in self.state.items()},
            "groups": [
                {k: copy.deepcopy(v) for k, v in group.items() if k not in ("params", "aggregator")}
                for group in self.param_groups
            ],
        }

    def _restore(self, snapshot: dict[str, Any]) -> None:
        with torch.no_grad():
            for param, value in snapshot["params"]:
                param.copy_(value)
        for param, grad in snapshot["grads"]:
            param.grad = grad
        self.state.clear()
        self.state.update(snapshot["state"])
        for group, saved in zip(self.param_groups, snapshot["groups"], strict=True):
            group.update(saved)


# -- helpers ---------------------------------------------------------------------------------------


def _check_aggregator(aggregator: Any, name: str) -> None:
    if not isinstance(aggregator, Aggregator):
        if isinstance(aggregator, type):
            got = f"the class {aggregator.__name__} (pass an instance: {aggregator.__name__}())"
        else:
            got = type(aggregator).__name__
        raise TypeError(
            f"{name if name.startswith('`') else f'`{name}`'} must be a "
            f"jdoptim.aggregation.Aggregator, but got {got}."
        )


def _check_disjoint(groups: list[dict[str, Any]], name: str) -> None:
    seen: set[int] = set()
    for group in groups:
        for param in group["params"]:
            if id(param) in seen:
                raise ValueError(
                    f"`{name}` must have every parameter in only one parameter group, but a "
                    f"parameter of shape {list(param.shape)} appears in several."
                )
            seen.add(id(param))


def _as_losses(losses: Any) -> list[Tensor]:
    loss_list = as_tensors(losses, "losses")
    if not loss_list:
        raise ValueError("`losses` must contain at least one loss, but got an empty sequence.")
    if sum(loss.numel() for loss in loss_list) == 0:
        raise ValueError("`losses` must contain at least one element, but all tensors are empty.")
    for i, loss in enumerate(loss_list):
        if not loss.requires_grad:
            raise ValueError(
                f"`losses` must require grad, but element {i} of shape {list(loss.shape)} does "
                "not: compute it from the parameters with gradients enabled (not under "
                "torch.no_grad() and not detached)."
            )
    return loss_list


def _requires_grad(result: Any) -> bool:
    if isinstance(result, Tensor):
        return result.requires_grad
    if isinstance(result, (list, tuple)):
        return any(isinstance(item, Tensor) and item.requires_grad for item in result)
    return False


def _rows_of_grad_tensors(
    losses: list[Tensor], grad_tensors: Tensor | Sequence[Tensor] | None
) -> list[Tensor] | None:
    """``jac_outputs`` giving one row per loss: row i is ``grad_tensors[i]`` on loss i."""
    if grad_tensors is None:
        return None
    values = check_multipliers(grad_tensors, losses, "grad_tensors", leading_dim=False)
    assert values is not None
    rows = []
    for i, (value, loss) in enumerate(zip(values, losses, strict=True)):
        row = loss.new_zeros((len(losses), *loss.shape))
        row[i] = value.detach().to(loss.dtype)
        rows.append(row)
    return rows


def _rows(losses: list[Tensor], jac_outputs: list[Tensor] | None) -> int:
    if jac_outputs is not None:
        return jac_outputs[0].shape[0]
    return sum(loss.numel() for loss in losses)


def _leaf_ids(roots: list[Tensor]) -> set[int]:
    """The ids of the leaf tensors from which ``roots`` are computed (a walk of the graph)."""
    ids: set[int] = set()
    seen: set[Any] = set()
    stack: list[Any] = []
    for root in roots:
        if root.grad_fn is None:
            ids.add(id(root))
        elif root.grad_fn not in seen:
            seen.add(root.grad_fn)
            stack.append(root.grad_fn)
    while stack:
        for child, _ in stack.pop().next_functions:
            if child is None or child in seen:
                continue
            seen.add(child)
            variable = getattr(child, "variable", None)
            if variable is not None:
                ids.add(id(variable))
            else:
                stack.append(child)
    return ids


def _flatten(
    jacobians: list[Tensor], blocks: list[_Block], m: int, extra_params: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """One flat buffer holding the ``[m, N]`` Jacobian, and each group's ``[m, N_g]`` view of it.

    The groups' Jacobians are consecutive column blocks of the matrix. When the engine already
    wrote the Jacobians as such blocks of one matrix, that matrix is used without a copy;
    otherwise they are copied, and released one by one so that the memory peak stays close to
    one copy. The buffer ends with room for one value per element of ``extra_params`` (filled
    by the caller), so that everything to reduce across processes is in one tensor.
    """
    params = [p for block in blocks for p in block.params]
    widths = [sum(block.sizes) for block in blocks]
    total = sum(widths)
    matrix = as_one_matrix(jacobians) if jacobians and not extra_params else None
    if matrix is not None and matrix.shape == (m, total) and matrix.is_contiguous():
        buffer = matrix.view(-1)
    elif not params and not extra_params:
        buffer = matrix = torch.empty(m, 0)
    else:
        everything = params + extra_params
        dtype = everything[0].dtype
        for param in everything:
            dtype = torch.promote_types(dtype, param.dtype)
        extra = sum(p.numel() for p in extra_params)
        buffer = torch.empty(m * total + extra, dtype=dtype, device=everything[0].device)
        matrix = buffer[: m * total].view(m, total)
        column = 0
        for k, param in enumerate(params):
            size = param.numel()
            matrix[:, column : column + size].copy_(jacobians[k].reshape(m, size))
            jacobians[k] = matrix  # drops the reference to the copied Jacobian
            column += size
    views = []
    start = 0
    for width in widths:
        views.append(matrix[:, start : start + width])
        start += width
    return buffer, views


def _aggregate(
    aggregator: Aggregator, matrix: Tensor, record_gramian: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, bool]:
    """``(update, weights, gramian, known_finite)``; a non-finite matrix never reaches a solver.

    A non-finite matrix gives a NaN update. ``known_finite`` is True when the update is known to
    be finite without looking at it: the Gramian was finite (so was the matrix, since the
    diagonal of ``J Jᵀ`` sums the squares of each row) and so were the weights.
    """

    def nan() -> Tensor:
        return torch.full_like(matrix[0], math.nan)

    if isinstance(aggregator, GramianWeightedAggregator):
        seen: list[Tensor] = []

        def check(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            gramian = args[0]
            seen.append(gramian.detach())
            if not bool(torch.isfinite(gramian).all()):
                raise _NonFiniteGramian

        handle = aggregator.gramian_weighting.register_forward_pre_hook(check)
        try:
            update, weights = aggregate_with_weights(aggregator, matrix)
        except _NonFiniteGramian:
            return nan(), None, seen[-1], False
        except Exception:
            if _all_finite([matrix]):
                raise
            return nan(), None, None, False
        finally:
            handle.remove()
        if seen:
            known_finite = weights is not None and bool(torch.isfinite(weights).all())
            return update, weights, seen[-1], known_finite
        # A subclass that does not call its weighting: check the Jacobian itself.
        if not _all_finite([matrix]):
            return nan(), None, None, False
        return update, weights, (matrix @ matrix.T) if record_gramian else None, False
    if not _all_finite([matrix]):
        return nan(), None, None, False
    update, weights = aggregate_with_weights(aggregator, matrix)
    return update, weights, (matrix @ matrix.T).detach() if record_gramian else None, False


def _all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether no tensor holds inf or NaN: one summing pass (a sum of values is non-finite iff
    some value is, up to overflow of the sum itself, which would overflow the update anyway)."""
    by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
    for tensor in tensors:
        if tensor.numel() == 0:
            continue
        if tensor.is_sparse:
            tensor = tensor.coalesce().values()
        low = tensor.dtype in (torch.float16, torch.bfloat16)
        by_device[tensor.device].append(tensor.sum(dtype=torch.float32) if low else tensor.sum())
    for sums in by_device.values():
        dtype = torch.float64 if any(s.dtype == torch.float64 for s in sums) else torch.float32
        if not bool(torch.stack([s.to(dtype) for s in sums]).isfinite().all()):
            return False
    return True


def _accumulate_grad(param: Tensor, update: Tensor) -> None:
    """Adds ``update`` to ``param.grad`` out of place (the previous tensor stays intact)."""
    update = update.to(param.dtype)
    if param.grad is None:
        param.grad = update
    else:
        param.grad = param.grad + update


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0:
        return False
    return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


def _grad_references(groups: list[dict[str, Any]]) -> list[tuple[Tensor, Tensor | None]]:
    return [(p, p.grad) for group in groups for p in group["params"]]


def _restore_grads(references: list[tuple[Tensor, Tensor | None]]) -> None:
    for param, grad in references:
        param.grad = grad


def _clone_state(module: torch.nn.Module) -> dict[str, Any]:
    return {
        key: value.clone() if isinstance(value, Tensor) else copy.deepcopy(value)
        for key, value in module.state_dict().items()
    }


def _diagnose(gramian: Tensor) -> GroupDiagnostics:
    norms = gramian.diagonal().clamp(min=0).sqrt()
    outer = norms[:, None] * norms[None, :]
    cosine = torch.where(outer > 0, gramian / outer.clamp(min=torch.finfo(gramian.dtype).tiny), 0.0)
    cosine = cosine.clamp(-1.0, 1.0)
    m = gramian.shape[0]
    upper = torch.triu(torch.ones(m, m, dtype=torch.bool, device=gramian.device), diagonal=1)
    conflicting = int(((gramian < 0) & upper).sum())
    return GroupDiagnostics(cosine, conflicting)
