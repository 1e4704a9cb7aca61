"""``JacobianOptimizer``: the ``torch.optim.Optimizer`` contract, argument checks and dispatch.

The work of each mode is in its own module (``_jacobian_mode``, ``_multi_task_mode``,
``_gramian_mode``, ``_scalarizer_mode``, ``_accumulation``): each computes a
:class:`~._plan.Plan` and writes nothing; this class runs it inside a
:class:`~._transaction.Transaction` and writes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from ..aggregation import Aggregator, GeneralizedWeighting, Weighting
from ..autojac._chunk_size import ChunkSize
from ..autojac._jac_fields import clear_jacs
from ..scalarization import Scalarizer
from ._accumulation import (
    check_aggregate_available,
    check_nothing_pending,
    check_rows,
    plan_accumulated,
)
from ._checks import (
    as_losses,
    check_arguments,
    check_devices,
    check_disjoint,
    check_flags,
    check_group,
    gramian_mode_refusal,
    refuse_jacobian_arguments,
    scalarizer_mode_refusal,
    step_arguments,
)
from ._closure import closure_evaluator
from ._context import Context, build_context
from ._diagnostics import GroupDiagnostics, diagnose
from ._distributed import Sync
from ._errors import check_finite_grads
from ._feature_mode import check_aggregate_at, plan_feature_level
from ._gramian_mode import (
    GramianEngine,
    gramian_weighting_of,
    plan_gramian,
)
from ._jacobian_mode import plan_jacobian
from ._multi_task_mode import plan_multi_task
from ._plan import Plan, Records, write
from ._scalarizer_mode import add_learned_parameters, plan_scalarized
from ._scalarizer_step import closure_step
from ._state import (
    ModeModules,
    jdoptim_state,
    keep_aggregators_across_loads,
    load_jdoptim_state,
    stateful_modules,
)
from ._torch_optimizer import (
    VALIDATING_OPTIMIZERS,
    SharedAttributes,
    init_optimizer_internals,
    load_with_hooks,
    save_with_hooks,
)
from ._transaction import Transaction

Losses = Tensor | Sequence[Tensor]


# What pickling keeps: torch's hooks and the records of the last plan are made anew on load.
_PICKLED = (
    "_inner",
    "_aggregator",
    "_scalarizer",
    "_weighting",
    "_engine",
    "_parallel_chunk_size",
    "_sync",
    "record_gramians",
)


class JacobianOptimizer(SharedAttributes, Optimizer):
    r"""Wraps a ``torch.optim`` optimizer so that it performs Jacobian descent.

    One step with losses :math:`L = (L_1, \dots, L_m)` computes the Jacobian :math:`J` of
    :math:`L` with respect to the parameters of each parameter group (``[m, N_g]``), turns it
    into one update :math:`A(J)` with the group's aggregator (its ``"aggregator"`` key, else
    ``aggregator``), accumulates :math:`A(J)` into ``.grad`` and calls the wrapped optimizer's
    ``step``. With :class:`~jdoptim.aggregation.Mean` this is the gradient step of the mean
    loss; with :class:`~jdoptim.aggregation.UPGrad` (the default) the update decreases every
    loss to first order whenever that is possible.

    The wrapper **is** a :class:`torch.optim.Optimizer`: ``param_groups``, ``state`` and
    ``defaults`` are the wrapped optimizer's own objects, so LR schedulers, GradScaler and
    PyTorch Lightning work on it. Modes: Jacobian mode (default), multi-task mode
    (``backward(losses, features=...)``), Gramian mode (``engine`` given) and scalarizer mode
    (``scalarizer`` given: one ordinary backward of ``scalarizer(losses)``); gradient
    accumulation, mixed precision, distributed training and failure safety are described in
    :doc:`/api/optimizer`.

    Args:
        optimizer: the optimizer to wrap (SGD, Adam, AdamW, LBFGS, custom ones). Its parameter
            groups may carry an ``"aggregator"`` key.
        aggregator: the aggregator of the groups without an ``"aggregator"`` key; ``None``
            means :class:`~jdoptim.aggregation.UPGrad` (none in scalarizer mode).
        scalarizer: a :class:`jdoptim.scalarization.Scalarizer`; selects scalarizer mode
            (exclusive); its learned parameters missing from ``optimizer`` join it as a group.
        weighting: Gramian mode only: the weighting applied to the Gramian; default
            ``aggregator.gramian_weighting``.
        engine: an :class:`jdoptim.autogram.Engine` over the model; selects Gramian mode.
        parallel_chunk_size: rows of the Jacobian per vectorised backward pass (see
            :func:`jdoptim.autojac.jac`); ``"auto"`` (the default) chooses from the graph.
        process_group: a ``torch.distributed`` process group to train across (see
            :doc:`/examples/distributed`); ``None`` for one process.

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
        scalarizer: Scalarizer | None = None,
        weighting: Weighting | GeneralizedWeighting | None = None,
        engine: GramianEngine | None = None,
        parallel_chunk_size: ChunkSize = "auto",
        process_group: Any = None,
    ) -> None:
        aggregator = check_arguments(
            optimizer, aggregator, scalarizer, weighting, engine, parallel_chunk_size, process_group
        )
        self._inner = optimizer
        self._aggregator = aggregator
        self._scalarizer = scalarizer
        self._weighting = weighting
        self._engine = engine
        self._parallel_chunk_size = parallel_chunk_size
        self._sync = Sync(process_group)
        self._runtime = Records()
        self.record_gramians = False
        if scalarizer is not None:
            add_learned_parameters(optimizer, scalarizer)
        self._setup()

    def _setup(self) -> None:
        init_optimizer_internals(self)
        keep_aggregators_across_loads(self._inner)

    @property
    def aggregator(self) -> Aggregator | None:
        """The aggregator of the groups without an ``"aggregator"`` key (None with a scalarizer)."""
        return self._aggregator

    @property
    def scalarizer(self) -> Scalarizer | None:
        """The scalarizer of scalarizer mode, else ``None``."""
        return self._scalarizer

    @property
    def last_weights(self) -> tuple[Tensor | None, ...]:
        """The weights used by the last aggregation, one entry per parameter group.

        ``None`` for a group whose aggregator is not weighted or that got no Jacobian; in
        Gramian and scalarizer modes every group holds the same weights, of the shape of the
        losses (in scalarizer mode, the gradient of the scalarized loss with respect to them).
        """
        return self._runtime.last_weights

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a parameter group to the wrapped optimizer.

        The group may carry an ``"aggregator"`` key (an
        :class:`~jdoptim.aggregation.Aggregator`) used for its Jacobian instead of the default
        aggregator (not in Gramian mode, where one weighting serves all groups).
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"`param_group` must be a dict, but got {type(param_group).__name__}.")
        check_group(
            param_group, "`param_group`", self._engine is not None, self._scalarizer is not None
        )
        params = param_group.get("params")
        if params is not None and not isinstance(params, (Tensor, set)):
            # A generator (e.g. ``module.parameters()``) is read once, here and by torch alike.
            param_group = {**param_group, "params": list(params)}
        check_disjoint([*self.param_groups, param_group], "param_group")
        self._inner.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Resets ``.grad`` (through the wrapped optimizer) and ``.jac`` of every parameter."""
        self._inner.zero_grad(set_to_none)
        clear_jacs([p for group in self.param_groups for p in group["params"]], set_to_none)
        self._runtime.clear_pending()

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
          :meth:`zero_grad`. Scalarizer mode returns the scalarized loss, and after the step
          gives FAMO (a scalarizer with ``update``) the closure's losses under
          :func:`torch.no_grad` (if that raises, the step stays applied).

        If anything raises, parameters, ``.grad``, the wrapped optimizer's state and the
        aggregators' state are as before the call.

        Raises:
            NonFiniteGradientError: some gradient is infinite or NaN (use a
                :class:`torch.amp.GradScaler` to skip such steps instead). Nothing is changed.

        Returns:
            What the wrapped optimizer's ``step`` returns.
        """
        losses, closure = step_arguments(losses, closure, backward_kwargs)
        check_nothing_pending(self._runtime.pending, "step")
        if closure is not None:
            scalarized = None if self._scalarizer is None else (lambda _: self._runtime.value)
            evaluate = closure_evaluator(
                closure, self._backward_and_check, backward_kwargs, self, scalarized
            )
            # Torch's other optimizers evaluate the closure once, first: only LBFGS and unknown
            # optimizers may re-run it after changing the parameters, so only they need a copy.
            once = type(self._inner) in VALIDATING_OPTIMIZERS
            transaction = self._transaction(params=not once, inner_state=not once)
            return closure_step(
                self._inner, evaluate, transaction, self._scalarizer, closure, self._sync
            )
        if losses is None:
            with self._transaction():
                check_finite_grads(self.param_groups, False)
                return self._inner.step()
        with self._transaction():
            self._backward_and_check(losses, backward_kwargs)
            return self._inner.step()

    def backward(
        self,
        losses: Losses,
        /,
        *,
        features: Tensor | Sequence[Tensor] | None = None,
        grad_tensors: Tensor | Sequence[Tensor] | None = None,
        retain_graph: bool = False,
        aggregate: bool = True,
        aggregate_at: str = "parameters",
    ) -> None:
        """Accumulates the aggregated Jacobian of ``losses`` into the parameters' ``.grad``.

        Args:
            losses: a tensor or a sequence of tensors; every element is one objective (one
                row of the Jacobian), unless ``grad_tensors`` is given.
            features: multi-task mode: the shared representation(s) computed by the shared
                parameters and used by the losses (Jacobian mode only). Every dependence of the
                losses on the shared parameters must go through them.
            grad_tensors: one tensor per loss, of that loss's shape: loss ``i`` then gives one
                row, the gradient of ``(grad_tensors[i] * losses[i]).sum()`` (like
                ``torch.autograd.backward``). Jacobian mode only.
            retain_graph: keep the graph for another backward pass.
            aggregate: ``False`` accumulates the Jacobian into ``.jac`` instead (gradient
                accumulation; see :doc:`/examples/gradient_accumulation`): call
                :meth:`aggregate` once after the last micro-batch. Not in Gramian mode.
            aggregate_at: with ``features``, ``"features"`` aggregates the Jacobian with respect
                to the features and backpropagates it once through the trunk (see
                :func:`jdoptim.autojac.feature_backward`); ``"parameters"`` is the exact mode.

        Scalarizer mode back-propagates ``scalarizer(losses)`` instead (the losses stacked, or
        concatenated when their shapes differ), reaching its learned parameters too.

        The weights are then in :attr:`last_weights`. Nothing is written if it raises; a
        non-finite Jacobian writes NaN gradients (a GradScaler then skips the step).
        """
        with self._transaction():
            self._write(
                self._plan(losses, features, grad_tensors, retain_graph, aggregate, aggregate_at)
            )

    def aggregate(self) -> None:
        """Aggregates the Jacobians accumulated by ``backward(..., aggregate=False)``.

        Each parameter group's accumulated ``.jac`` is aggregated by the group's aggregator and
        added to ``.grad`` (with ``process_group``, after one all-reduce), then the ``.jac`` are
        deleted. Call it before ``scaler.unscale_``, gradient clipping and :meth:`step`, so
        that they all see the aggregated ``.grad``. See :doc:`/examples/gradient_accumulation`.

        Example:
            >>> import torch
            >>> from jdoptim import JacobianOptimizer
            >>> from jdoptim.aggregation import Mean
            >>> weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
            >>> opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1), Mean())
            >>> for x in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])):  # 2 micro-batches
            ...     losses = torch.stack([(weight * x).sum(), weight.sum()]) / 2
            ...     opt.backward(losses, aggregate=False)
            >>> weight.jac
            tensor([[0.5000, 0.5000],
                    [1.0000, 1.0000]])
            >>> opt.aggregate()
            >>> weight.grad
            tensor([0.7500, 0.7500])
        """
        check_aggregate_available(self._engine is not None, self._scalarizer is not None)
        with self._transaction():
            self._write(plan_accumulated(self._context(), self._runtime.pending_losses))
        self._runtime.clear_pending()

    def diagnostics(self) -> tuple[GroupDiagnostics | None, ...]:
        """Conflict diagnostics of the last aggregation, one entry per parameter group.

        Computed on request from the Gramians recorded during :meth:`backward` (recorded for
        free by Gramian-weighted aggregators and in Gramian mode; other aggregators record one
        only when :attr:`record_gramians` is set). ``None`` for groups without a Gramian, and
        for every group in scalarizer mode.

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
            >>> diagnostics.cosine_similarities.round(decimals=3)
            tensor([[ 1., -1.,  0.],
                    [-1.,  1.,  0.],
                    [ 0.,  0.,  1.]])
        """
        return tuple(
            None if gramian is None else diagnose(gramian) for gramian in self._runtime.gramians
        )

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus the state of the aggregators and weighting.

        Made only of tensors, numbers, strings and containers, so that
        ``torch.load(path, weights_only=True)`` reads it back. Aggregators are not saved in the
        parameter groups; their state (e.g. the weights of
        :class:`~jdoptim.aggregation.NashMTL`) is under the key ``"jdoptim"``.
        """
        return save_with_hooks(
            self,
            lambda: {
                **self._inner.state_dict(),
                "jdoptim": jdoptim_state(self._modules(), self.param_groups, self._sync),
            },
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict made by :meth:`state_dict` (or by the wrapped optimizer).

        The aggregators stay the current objects (so hooks registered on them stay); their
        state is loaded from the ``"jdoptim"`` entry when present. On error nothing changes.
        """

        def load(state_dict: dict[str, Any]) -> None:
            extra = state_dict.pop("jdoptim", None)
            with self._transaction(inner_state=True):
                self._inner.load_state_dict(state_dict)
                if extra is not None:
                    load_jdoptim_state(extra, self._modules(), self.param_groups, self._sync)

        load_with_hooks(self, state_dict, load)

    def __getstate__(self) -> dict[str, Any]:
        return {key: self.__dict__[key] for key in _PICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_scalarizer": None, **state})
        self._runtime = Records()
        self._setup()

    def __repr__(self) -> str:
        inner = "\n    ".join(repr(self._inner).splitlines())
        mode = "aggregator" if self._scalarizer is None else "scalarizer"
        parts = [inner, f"{mode}={getattr(self, f'_{mode}')!r}"]
        if self._engine is not None:
            parts.append(f"weighting={gramian_weighting_of(self._aggregator, self._weighting)!r}")
            parts.append(f"engine={self._engine!r}")
        return "JacobianOptimizer(\n    " + ",\n    ".join(parts) + "\n)"

    def _plan(
        self,
        losses: Losses,
        features: Tensor | Sequence[Tensor] | None = None,
        grad_tensors: Tensor | Sequence[Tensor] | None = None,
        retain_graph: bool = False,
        aggregate: bool = True,
        aggregate_at: str = "parameters",
    ) -> Plan:
        """The plan of :meth:`backward` (its arguments checked), nothing written yet."""
        check_flags(retain_graph=retain_graph, aggregate=aggregate)
        at_features = check_aggregate_at(aggregate_at, features, aggregate, self._sync.active)
        if aggregate:
            check_nothing_pending(self._runtime.pending, "backward")
        loss_list = as_losses(losses)
        context = self._context()
        check_devices(loss_list, context.params)
        if self._scalarizer is not None:
            refuse_jacobian_arguments(features, grad_tensors, aggregate, scalarizer_mode_refusal)
            return plan_scalarized(self._scalarizer, context, loss_list, retain_graph)
        if self._engine is not None:
            refuse_jacobian_arguments(features, grad_tensors, aggregate, gramian_mode_refusal)
            return plan_gramian(
                self._engine,
                gramian_weighting_of(self._aggregator, self._weighting),
                context.groups,
                loss_list,
                retain_graph,
                self._sync,
            )
        if features is not None and at_features:
            return plan_feature_level(context, loss_list, features, grad_tensors, retain_graph)
        if features is None:
            plan = plan_jacobian(context, loss_list, grad_tensors, retain_graph, aggregate)
        else:
            plan = plan_multi_task(
                context, loss_list, features, grad_tensors, retain_graph, aggregate
            )
        check_rows(plan.jacs)
        return plan

    def _write(self, plan: Plan) -> None:
        write(plan)
        self._runtime.record(plan)

    def _context(self) -> Context:
        groups, chunk = self.param_groups, self._parallel_chunk_size
        return build_context(groups, self._aggregator, chunk, self._sync, self.record_gramians)

    def _modules(self) -> ModeModules:
        return ModeModules(self._aggregator, self._weighting, self._scalarizer)

    def _transaction(self, *, params: bool = False, inner_state: bool = False) -> Transaction:
        return Transaction(
            self._inner,
            stateful_modules(self._modules(), self.param_groups),
            self._sync.shared_random,
            params=params,
            inner_state=inner_state,
        )

    def _backward_and_check(self, losses: Any, backward_kwargs: dict[str, Any]) -> None:
        """:meth:`backward`, then refuses non-finite gradients (the caller's transaction undoes
        both). When every ``.grad`` was None before and the backward knows that what it wrote
        is finite (it saw finite Gramians and weights), no pass over the gradients is needed."""
        fresh = all(p.grad is None for group in self.param_groups for p in group["params"])
        self._write(self._plan(losses, **backward_kwargs))
        check_finite_grads(self.param_groups, fresh and self._runtime.wrote_finite)
