"""The autogram engine: Gramians of the Jacobian of losses, layer by layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._attention import is_plain_attention
from ._attention_graph import with_projection_edge
from ._autocast import accumulation_dtype, without_autocast
from ._backward_pass import Used, accumulate_gramian
from ._batch_checks import check_batch_independence, check_losses_are_per_sample
from ._broadcast import per_sample_stand_ins
from ._convolution import is_plain_convolution_module
from ._embedding import is_plain_embedding
from ._gather import current as gathering_in_effect
from ._graph import EngineParameter, find_used_parameters
from ._layout import to_generalized_gramian
from ._linear import is_plain_linear
from ._module_hooks import CallRecorder, ModuleCall
from ._normalization import is_plain_normalization
from ._sharing import Signature, find_shared_calls, has_batch_shapes
from ._vmap_warnings import quiet_vmap


class Engine:
    r"""Computes the Gramian of the Jacobian of losses without materialising the Jacobian.

    For losses :math:`L` of shape ``[m1, …, mk]`` and the parameters :math:`θ` of ``modules``
    (all their parameters, recursively, that require grad), the generalized Gramian is

    .. math:: G[i_1, …, i_k, j_k, …, j_1] = \langle ∇_θ L[i_1, …, i_k],
        ∇_θ L[j_1, …, j_k] \rangle,

    of shape ``[m1, …, mk, mk, …, m1]`` (0-D for a scalar, ``[m, m]`` for a vector). It is
    the sum over the *layers* (the modules that directly own parameters) of the Gramians of
    their Jacobians (Algorithm 3 of *Jacobian Descent for Multi-Objective Optimization*,
    Quinton & Rey): the engine obtains the gradients of the losses with respect to each layer's
    outputs, then forms each layer's Jacobian (or, for :class:`torch.nn.Linear`, directly its
    Gramian) from its recorded inputs, one layer at a time.

    **How to use it.** Build the engine once, before the forward passes: it registers forward
    hooks on the modules that directly own parameters, and each of their calls made while
    gradients are enabled is recorded. :meth:`compute_gramian` uses and then forgets the
    records (so each forward pass serves one call), and leaves the graph intact
    (``retain_graph``) so that the weights can be back-propagated::

        engine = Engine(model, batch_dim=0)
        for x, y in loader:
            losses = loss_fn(model(x), y)  # reduction="none": one loss per sample
            weights = UPGradWeighting()(engine.compute_gramian(losses))
            optimizer.zero_grad()
            losses.backward(weights)
            optimizer.step()

    ``losses.backward(weights)`` then gives the same ``.grad`` as aggregating the Jacobian with
    the corresponding aggregator (``Jᵀ w``). For losses with several dimensions (e.g.
    ``[batch, tasks]``), use :class:`~jdoptim.aggregation.Flattening` around the weighting.
    The hooks live as long as the engine; :meth:`remove` takes them off earlier. Each recorded
    call keeps its inputs and its part of the graph alive until the next :meth:`compute_gramian`:
    run forward passes that no :meth:`compute_gramian` follows (e.g. evaluation) under
    :func:`torch.no_grad`, or their records (and memory) pile up.

    **Batch dimension.** With ``batch_dim=d``, the losses are assumed independent across
    dimension ``d``: loss ``i`` along ``d`` depends only on sample ``i``. The gradients with
    respect to the layer outputs then take one backward pass per loss of a single sample, and
    each layer's Jacobian comes from per-sample vector-Jacobian products. Every module between
    the layers and the losses must treat the samples independently: batch normalization using
    batch statistics, modules updating running statistics in training mode, and recurrent
    modules raise a :class:`ValueError`. A call whose tensors do not hold the batch on their
    first dimension (a position embedding called on ``torch.arange(T)``, a learned constant,
    a shared table, broadcast into the batch later) serves every sample: its contribution is
    computed exactly, from the per-sample gradients of the sums it is added into when it is
    a closed-form layer added into batched tensors (``tokens + positions``), otherwise one
    backward pass per loss, as without a batch dimension. Sizes alone
    never decide it (a sequence as long as the batch is not taken for the batch): the first
    call of each module with given shapes is tested with the gradients of the losses weighted
    by sample, which scale slice by slice only for batched tensors (two backward passes, once).
    Modules outside the engine that mix the samples (e.g. a batch norm
    between two layers of a partial engine) cannot be detected: use ``batch_dim=None`` then.
    The losses themselves must be per-sample losses: shapes alone cannot tell a vector of
    ``B`` per-sample losses from ``B`` task losses that each average the batch of ``B``
    samples, so :meth:`compute_gramian` differentiates the losses at index 0 along
    ``batch_dim`` down to the outputs of the last layer called, and raises a
    :class:`ValueError` when they depend on another sample (task losses take
    ``batch_dim=None``). This costs one backward pass through the computation of the losses
    from that layer's outputs.
    With ``batch_dim=None`` no assumption is made and every module works, at the cost of one
    backward pass per loss.

    **Mixed precision.** Losses computed under :func:`torch.autocast` (float16 or bfloat16)
    work with every layer: the closed forms use each layer's input rounded as autocast rounded
    it, the other calls are replayed under the autocast state of their forward pass (whatever
    the state around :meth:`compute_gramian`), and the Gramian is accumulated, and returned, in
    float32 for half-precision losses, so that the Gramian of losses scaled by a
    :class:`torch.amp.GradScaler` does not overflow.

    **What makes it refuse.** A parameter of the engine that receives gradient through a
    computation that is not a call of a module owning it (e.g. ``F.linear(h,
    self.embedding.weight)`` written in the parent's forward) raises a :class:`ValueError`, as
    does a recorded input modified in place after the call. An output modified in place after
    the call is fine (the engine differentiates the value the module returned). A module that
    draws random numbers in its own forward (dropout inside a layer with parameters, in
    training mode) raises: keep dropout in separate modules. Calls replayed through
    :mod:`torch.func` (every module but ``nn.Linear``, ``nn.Embedding``, ``nn.LayerNorm``,
    ``nn.RMSNorm``, ``nn.MultiheadAttention`` and, with a batch dimension, plain
    convolutions, alone or sharing a parameter, as an output head tied to the token
    embedding) are checked against a fingerprint of their recorded outputs: a module that
    mixes the samples, or whose parameters changed between the forward pass and
    :meth:`compute_gramian`, raises instead of giving a wrong Gramian.

    Args:
        modules: the modules whose parameters the Gramian is taken with respect to (a whole
            model, or only some layers for partial Jacobian descent).
        batch_dim: the dimension of the losses that indexes independent samples, or ``None``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from jdoptim.autogram import Engine
        >>> model = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        ...     _ = model.bias.zero_()
        >>> engine = Engine(model, batch_dim=0)
        >>> losses = model(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).squeeze(1)
        >>> engine.compute_gramian(losses)  # [1 + xᵢ·xⱼ] for the weight and the bias
        tensor([[2., 2.],
                [2., 3.]])
    """

    def __init__(self, *modules: nn.Module, batch_dim: int | None) -> None:
        if not modules:
            raise ValueError("`modules` must contain at least one torch.nn.Module, but got none.")
        for module in modules:
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"`modules` must be torch.nn.Module instances, but got {type(module).__name__}."
                )
        if batch_dim is not None and (
            not isinstance(batch_dim, int) or isinstance(batch_dim, bool)
        ):
            raise TypeError(f"`batch_dim` must be an int or None, but got {batch_dim!r}.")
        self.batch_dim = batch_dim

        self._named_modules: list[tuple[str, nn.Module]] = []
        self._parameters: dict[int, EngineParameter] = {}
        seen: set[int] = set()
        for index, root in enumerate(modules):
            prefix = "" if len(modules) == 1 else f"modules[{index}]."
            for name, module in root.named_modules():
                if id(module) not in seen:
                    seen.add(id(module))
                    self._named_modules.append((prefix + name, module))
            for name, parameter in root.named_parameters():
                if id(parameter) not in self._parameters:
                    self._parameters[id(parameter)] = EngineParameter(parameter, prefix + name)
        if batch_dim is not None:
            check_batch_independence(self._named_modules, batch_dim)
        layers = [
            module
            for _, module in self._named_modules
            if next(module.parameters(recurse=False), None) is not None
        ]
        self._recorder = CallRecorder(layers, self._replays)
        #: Per module and shapes: whether its calls serve every sample at once (see _sharing).
        self._verdicts: dict[Signature, bool] = {}
        #: Per call signature and shapes of its sums: whether it has a per-sample stand-in.
        self._broadcast_verdicts: dict[tuple[Signature, tuple[tuple[int, ...], ...]], bool] = {}
        self._removed = False

    def compute_gramian(self, output: Tensor, /) -> Tensor:
        """Returns the generalized Gramian of ``output`` w.r.t. the parameters of the engine.

        Uses and forgets the calls recorded since the previous call of this method (or since
        construction). The graph of ``output`` is retained, so that ``output.backward(weights)``
        can follow.

        Args:
            output: the losses, computed from calls of the engine's modules made after the last
                :meth:`compute_gramian`.

        Returns:
            A tensor of shape ``[*output.shape, *reversed(output.shape)]`` on ``output``'s
            device, with ``output``'s dtype, or float32 when it is float16 or bfloat16.
        """
        if self._removed:
            raise RuntimeError("This `Engine` was removed: its hooks no longer record the calls.")
        calls = self._recorder.take_calls()
        if not isinstance(output, Tensor):
            raise TypeError(f"`output` must be a torch.Tensor, but got {type(output).__name__}.")
        if not output.dtype.is_floating_point:
            raise TypeError(f"`output` must have a floating dtype, but got {output.dtype}.")
        batch_dim = self._normalized_batch_dim(output)
        if batch_dim is not None:
            check_batch_independence(self._named_modules, batch_dim)
        shape = tuple(output.shape)
        samples = 1 if batch_dim is None else shape[batch_dim]
        rows = output.numel() // samples if samples else 0
        size = rows * samples
        across_ranks = gathering_in_effect()
        if across_ranks is not None and batch_dim is not None:
            # The Gramian of the losses of every rank, concatenated along the batch dimension.
            global_samples = across_ranks.global_samples(samples, output.device)
            shape = (*shape[:batch_dim], global_samples, *shape[batch_dim + 1 :])
            size = rows * global_samples
        # Float32 for half-precision losses: the Gramian of GradScaler-scaled losses (e.g.
        # under autocast) overflows float16.
        gramian = output.new_zeros(size, size, dtype=accumulation_dtype(output.dtype))
        if size == 0 or not output.requires_grad:
            if size and not output.requires_grad:
                raise ValueError(
                    "`output` must be computed from the parameters of the engine's modules "
                    "(it does not require grad)."
                )
            return to_generalized_gramian(gramian, shape, batch_dim)

        used = find_used_parameters(output, calls, self._parameters)
        relevant = [call for call in calls if call in used]
        for call in relevant:
            _check_call(call)
        if not relevant:
            return to_generalized_gramian(gramian, shape, batch_dim)
        shared: set[ModuleCall] = set()
        if batch_dim is not None:
            batched = [call for call in relevant if has_batch_shapes(call, samples)]
            if batched:
                # The outputs of the last layer called: the cheapest to differentiate the
                # losses to.
                last = [edge for edge in batched[-1].output_edges if edge is not None]
                check_losses_are_per_sample(output, batch_dim, last, samples)
            shared = find_shared_calls(output, batch_dim, samples, relevant, self._verdicts)
        groups = _groups_sharing_parameters(relevant, used)
        per_sample = [group for group in groups if not shared.intersection(group)]
        per_loss = [group for group in groups if shared.intersection(group)]
        if per_loss:
            assert batch_dim is not None
            alone = {group[0] for group in per_loss if len(group) == 1}
            stand_ins = per_sample_stand_ins(
                output, batch_dim, samples, alone, self._broadcast_verdicts
            )
            for call, stand_in in stand_ins.items():
                used[stand_in] = used[call]
                per_sample.append([stand_in])
            per_loss = [group for group in per_loss if group[0] not in stand_ins]
        if across_ranks is None:
            per_sample = [_reading_the_graph(group, used) for group in per_sample]
            per_loss = [_reading_the_graph(group, used) for group in per_loss]
        self._recorder.enabled = False  # Replays call the modules: they must not be recorded.
        try:
            with without_autocast(), quiet_vmap():  # replays restore their forward's autocast
                if per_sample:
                    grad_outputs = _row_selectors(output, batch_dim, rows)
                    accumulate_gramian(
                        output, grad_outputs, rows, per_sample, used, batch_dim is not None, gramian
                    )
                if per_loss:
                    # Calls that serve every sample at once: one row per loss, exactly.
                    assert batch_dim is not None
                    selectors = _loss_selectors(output, batch_dim)
                    accumulate_gramian(output, selectors, size, per_loss, used, False, gramian)
        finally:
            self._recorder.enabled = True
        return to_generalized_gramian(gramian, shape, batch_dim)

    def _replays(self, module: nn.Module) -> bool:
        """Whether calls of ``module`` may be replayed (closed forms need no check of outputs)."""
        if is_plain_linear(module) or is_plain_embedding(module):
            return False
        if is_plain_normalization(module):
            return False
        return self.batch_dim is None or not is_plain_convolution_module(module)

    def parameters(self) -> list[nn.Parameter]:
        """The parameters whose Gramian the engine computes: those of its modules, each once.

        Example:
            >>> import torch
            >>> from jdoptim.autogram import Engine
            >>> engine = Engine(torch.nn.Linear(3, 2), batch_dim=0)
            >>> [list(p.shape) for p in engine.parameters()]
            [[2, 3], [2]]
        """
        return [entry.parameter for entry in self._parameters.values()]

    def remove(self) -> None:
        """Removes the engine's hooks from the modules; the engine cannot be used afterwards."""
        self._recorder.remove()
        self._removed = True

    def _normalized_batch_dim(self, output: Tensor) -> int | None:
        if self.batch_dim is None:
            return None
        dims = output.dim()
        if not -dims <= self.batch_dim < dims:
            raise ValueError(
                f"`batch_dim={self.batch_dim}` must be a dimension of `output`, but `output` has "
                f"shape {list(output.shape)}. Use `batch_dim=None` for losses without a batch "
                "dimension."
            )
        return self.batch_dim % dims

    def __repr__(self) -> str:
        return f"Engine({len(self._parameters)} parameters, batch_dim={self.batch_dim})"


def _check_call(call: ModuleCall) -> None:
    name = type(call.module).__name__
    if call.modifies_inputs:
        raise ValueError(
            f"The module {name} modifies one of its inputs in place, so the `Engine` cannot "
            "replay its call. Make its forward out of place."
        )
    if any(t._version != v for t, v in zip(call.input_tensors, call.input_versions, strict=True)):
        raise ValueError(
            f"An input of the module {name} was modified in place after the module was "
            "called, so the `Engine` cannot replay its call. Use an out-of-place operation "
            "(e.g. `torch.relu(x)` instead of `x.relu_()`) or clone the tensor before."
        )


def _row_selectors(output: Tensor, batch_dim: int | None, rows: int) -> Tensor:
    """``grad_outputs`` selecting each row: the losses at one position of the non-batch dims.

    Row ``t`` sums the losses of every sample at position ``t`` of the other dimensions
    (without a batch dimension, it is the ``t``-th loss alone). With one row, the selector is
    simply a tensor of ones shaped like ``output``.
    """
    shape = output.shape
    if rows == 1:
        return torch.ones_like(output)
    identity = torch.eye(rows, dtype=output.dtype, device=output.device)
    if batch_dim is None:
        return identity.reshape(rows, *shape)
    others = [size for d, size in enumerate(shape) if d != batch_dim]
    selectors = identity.reshape(rows, *others).unsqueeze(1 + batch_dim)
    return selectors.expand(rows, *shape).contiguous()


def _loss_selectors(output: Tensor, batch_dim: int) -> Tensor:
    """``grad_outputs`` selecting each loss alone, row ``t * B + b`` for the loss ``(t, b)``."""
    samples = output.shape[batch_dim]
    size = output.numel()
    others = [n for d, n in enumerate(output.shape) if d != batch_dim]
    identity = torch.eye(size, dtype=output.dtype, device=output.device)
    return identity.reshape(size, *others, samples).movedim(-1, 1 + batch_dim).contiguous()


def _reading_the_graph(group: list[ModuleCall], used: Used) -> list[ModuleCall]:
    """``group``, with a self-attention call alone in it replaced by one that also receives
    the gradient of its fused projection (no recomputation of the attention, see
    ``_attention_graph``)."""
    if len(group) != 1 or not is_plain_attention(group[0].module):
        return group
    replaced = with_projection_edge(group[0])
    if replaced is None:
        return group
    used[replaced] = used[group[0]]
    return [replaced]


def _groups_sharing_parameters(
    calls: list[ModuleCall], used: dict[ModuleCall, list[tuple[str, nn.Parameter]]]
) -> list[list[ModuleCall]]:
    """Partitions ``calls`` so that calls using a common parameter are in the same group."""
    group_of_parameter: dict[int, int] = {}
    groups: dict[int, list[ModuleCall]] = {}
    for call in calls:
        targets = {group_of_parameter[id(p)] for _, p in used[call] if id(p) in group_of_parameter}
        merged = [call]
        for target in targets:
            merged.extend(groups.pop(target))
        key = id(call)
        groups[key] = merged
        for member in merged:
            for _, parameter in used[member]:
                group_of_parameter[id(parameter)] = key
    return list(groups.values())
