"""Gramian contribution of a group of calls that share parameters.

Notation: the losses are indexed by ``R = T · B`` rows ``(t, b)``: ``b`` runs over the ``B``
samples of the batch (``B = 1`` without a batch dimension) and ``t`` over the ``T`` losses of one
sample. ``deltas`` hold, for every output of a call, the gradient of every row ``t`` summed over
the samples: ``[T, *output.shape]``. With a batch dimension, batch independence makes the slice
``deltas[t, b]`` the gradient of the loss ``(t, b)`` alone, so per-sample vector-Jacobian
products give the Jacobian of the call's parameters row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from ._attention import attention_gramian, is_plain_attention
from ._autocast import accumulation_dtype, replaying_under
from ._broadcast import reduce_to_broadcast
from ._convolution import convolution_gramian, is_plain_convolution
from ._embedding import embedding_gramian, is_plain_embedding
from ._gather import current as gathering_in_effect
from ._linear import is_plain_linear, linear_gramian
from ._module_hooks import ModuleCall, slice_sums
from ._normalization import is_plain_normalization, normalization_gramian
from ._tied import tied_gramian

NamedParameters = list[tuple[str, nn.Parameter]]


def group_gramian(
    calls: list[ModuleCall],
    deltas: dict[ModuleCall, list[Tensor | None]],
    used: dict[ModuleCall, NamedParameters],
    batched: bool,
) -> Tensor:
    """The ``[R, R]`` Gramian of the parameters used by ``calls`` (summed over the calls)."""
    across_ranks = gathering_in_effect()
    if across_ranks is not None:
        return across_ranks.group_gramian(calls, deltas, used, batched)
    if len(calls) == 1:
        closed_form = _closed_form_gramian(calls[0], deltas[calls[0]], used[calls[0]], batched)
        if closed_form is not None:
            return closed_form
    else:
        tied = tied_gramian(calls, deltas, used, batched)
        if tied is not None:
            return tied

    jacobians: dict[int, Tensor] = {}
    for call in calls:
        if all(delta is None for delta in deltas[call]):
            continue  # No gradient reached this call's outputs: no contribution.
        named_parameters = used[call]
        call_jacobian = call_jacobians(call, deltas[call], named_parameters, batched)
        for (_, parameter), jacobian in zip(named_parameters, call_jacobian, strict=True):
            key = id(parameter)
            jacobians[key] = jacobian if key not in jacobians else jacobians[key] + jacobian
    delta = next(d for call in calls for d in deltas[call] if d is not None)
    size = delta.shape[0] * (delta.shape[1] if batched else 1)
    gramian = delta.new_zeros(size, size, dtype=accumulation_dtype(delta.dtype))
    for jacobian in jacobians.values():
        matrix = jacobian.reshape(size, -1).to(gramian.dtype)
        gramian += matrix @ matrix.T
    return gramian


def call_jacobians(
    call: ModuleCall,
    deltas: list[Tensor | None],
    named_parameters: NamedParameters,
    batched: bool,
) -> list[Tensor]:
    """Jacobians ``[T, B, *parameter.shape]`` of the rows w.r.t. each of ``named_parameters``.

    The call is replayed with :func:`torch.func.functional_call` on its recorded inputs (on
    copies of the module's buffers, so that running statistics are not updated twice), and the
    deltas are pulled back with :func:`torch.func.vjp`, vectorised over the rows and, with a
    batch dimension, over the samples.
    """
    module = call.module
    primals = {name: parameter.detach() for name, parameter in named_parameters}
    buffers = dict(module.named_buffers())
    leaves, spec = tree_flatten((call.args, call.kwargs))
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
    inputs = tuple(leaves[i] for i in positions)
    kept = [i for i, delta in enumerate(deltas) if delta is not None]
    cotangents = tuple(delta for delta in deltas if delta is not None)

    def replay(values: dict[str, Tensor], tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        new_leaves = list(leaves)
        for position, tensor in zip(positions, tensors, strict=True):
            new_leaves[position] = tensor
        args, kwargs = tree_unflatten(new_leaves, spec)
        # Copies made inside the transform: a replay must not update the running statistics.
        copies = {name: buffer.clone() for name, buffer in buffers.items()}
        with replaying_under(call.autocast):
            output = functional_call(module, {**values, **copies}, args, kwargs)
        output_leaves = tree_flatten(output)[0]
        return tuple(output_leaves[i] for i in kept)

    if batched:

        def per_sample(
            tensors: tuple[Tensor, ...], sample_cotangents: tuple[Tensor, ...]
        ) -> tuple[dict[str, Tensor], tuple[Tensor, ...]]:
            tensors = tuple(tensor.unsqueeze(0) for tensor in tensors)
            result = vjp(lambda values: replay(values, tensors), primals)
            outputs, vjp_fn = result[0], result[1]
            rows = tuple(cotangent.unsqueeze(1) for cotangent in sample_cotangents)
            sums = tuple(output.to(accumulation_dtype(output.dtype)).sum() for output in outputs)
            return _pull_back_rows(vjp_fn, rows), sums

        try:
            per_sample_jacobians, sums = vmap(per_sample, in_dims=(0, 1), randomness="error")(
                inputs, cotangents
            )
        except RuntimeError as error:
            if "random" in str(error):
                raise _randomness_error(module) from error
            raise ValueError(
                f"The module {type(module).__name__} cannot be replayed sample by sample with "
                f"`torch.func.vmap` ({error}). Use `batch_dim=None`."
            ) from error
        _check_replay(call, kept, sums)
        return [per_sample_jacobians[name].transpose(0, 1) for name, _ in named_parameters]

    states = _rng_states(primals.values())
    result = vjp(lambda values: replay(values, inputs), primals)
    outputs, vjp_fn = result[0], result[1]
    if any(
        not torch.equal(before, after)
        for before, after in zip(states, _rng_states(primals.values()), strict=True)
    ):
        raise _randomness_error(module)
    _check_replay(call, kept, tuple(slice_sums(output)[0] for output in outputs))
    jacobians = _pull_back_rows(vjp_fn, cotangents)
    return [jacobians[name].unsqueeze(1) for name, _ in named_parameters]


def _check_replay(call: ModuleCall, kept: list[int], sums: tuple[Tensor, ...]) -> None:
    """Raises if the replayed outputs do not sum, slice by slice, as the recorded ones."""
    for index, replayed in zip(kept, sums, strict=True):
        recorded = call.output_sums[index] if index < len(call.output_sums) else None
        if recorded is None:
            continue
        total, magnitude, dtype = recorded
        # Replays may round differently (e.g. sample by sample): by up to a unit in the last
        # place of each entry in half precision (2^-8 for bfloat16).
        tolerance = 1e-9 if dtype == torch.float64 else max(1e-3, 2 * torch.finfo(dtype).eps)
        if replayed.shape != total.shape or bool(
            ((replayed - total).abs() > tolerance * (magnitude + 1e-30)).any()
        ):
            raise ValueError(
                f"The module {type(call.module).__name__} gives other outputs when the `Engine` "
                "replays its call (sample by sample with a batch dimension) than in the forward "
                "pass: it mixes the samples of the batch (use `batch_dim=None`), or its "
                "parameters or state changed between the forward pass and `compute_gramian` "
                "(compute the Gramian before the optimizer step)."
            )


def _pull_back_rows(vjp_fn: Callable[..., Any], rows: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """``vjp_fn`` applied to each row ``[T, ...]`` of the cotangents, stacked along dim 0."""
    if rows[0].shape[0] == 1:
        single: dict[str, Tensor] = vjp_fn(tuple(row[0] for row in rows))[0]
        return {name: value.unsqueeze(0) for name, value in single.items()}
    batched: dict[str, Tensor] = vmap(vjp_fn)(rows)[0]
    return batched


def _rng_states(parameters: Any) -> list[Tensor]:
    states = [torch.random.get_rng_state()]
    devices = {p.device for p in parameters if p.device.type == "cuda"}
    states.extend(torch.cuda.get_rng_state(device) for device in devices)
    return states


def _randomness_error(module: nn.Module) -> ValueError:
    return ValueError(
        f"The module {type(module).__name__} draws random numbers in its forward (e.g. dropout "
        "in training mode), so its Jacobian cannot be recomputed exactly by the `Engine`. Put "
        "the module in eval mode, or move the random operation into a separate module without "
        "parameters (e.g. `nn.Dropout` after it)."
    )


def _closed_form_gramian(
    call: ModuleCall,
    deltas: list[Tensor | None],
    named_parameters: NamedParameters,
    batched: bool,
) -> Tensor | None:
    """The Gramian of a single call of a layer with a closed form, or None for others.

    Closed forms: linear layers, embeddings, layer and RMS normalisations and, with a batch
    dimension, convolutions.
    """
    names = {name for name, _ in named_parameters}
    if is_plain_attention(call.module):
        return attention_gramian(call, deltas, names, batched)
    if call.broadcast_shape is not None:
        deltas = [reduce_to_broadcast(deltas, call.broadcast_shape)]
    if (
        len(call.args) != 1
        or not isinstance(call.args[0], Tensor)
        or call.kwargs
        or len(deltas) != 1
        or deltas[0] is None
        or not names <= {"weight", "bias"}
    ):
        return None
    x, delta = call.args[0], deltas[0]
    if is_plain_embedding(call.module) and names == {"weight"}:
        assert isinstance(call.module, nn.Embedding)
        return embedding_gramian(call.module, x, delta, batched)
    if is_plain_normalization(call.module):
        return normalization_gramian(call.module, x, delta, names, batched)
    if is_plain_linear(call.module):
        return linear_gramian(call.module, x, delta, names, batched)
    if batched and is_plain_convolution(call.module, x):
        budget = max(x.numel(), delta[0].numel())
        return convolution_gramian(call.module, x, delta, names, budget)
    return None
