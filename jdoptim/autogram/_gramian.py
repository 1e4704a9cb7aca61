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

from ._module_hooks import ModuleCall

NamedParameters = list[tuple[str, nn.Parameter]]


def group_gramian(
    calls: list[ModuleCall],
    deltas: dict[ModuleCall, list[Tensor | None]],
    used: dict[ModuleCall, NamedParameters],
    batched: bool,
) -> Tensor:
    """The ``[R, R]`` Gramian of the parameters used by ``calls`` (summed over the calls)."""
    if len(calls) == 1 and _is_plain_linear_call(calls[0], deltas[calls[0]], used[calls[0]]):
        call = calls[0]
        delta = next(d for d in deltas[call] if d is not None)
        return linear_gramian(call.module, call.args[0], delta, used[call], batched)

    jacobians: dict[int, Tensor] = {}
    for call in calls:
        named_parameters = used[call]
        call_jacobian = call_jacobians(call, deltas[call], named_parameters, batched)
        for (_, parameter), jacobian in zip(named_parameters, call_jacobian, strict=True):
            key = id(parameter)
            jacobians[key] = jacobian if key not in jacobians else jacobians[key] + jacobian
    gramian: Tensor | None = None
    for jacobian in jacobians.values():
        matrix = jacobian.reshape(jacobian.shape[0] * jacobian.shape[1], -1)
        contribution = matrix @ matrix.T
        gramian = contribution if gramian is None else gramian + contribution
    assert gramian is not None
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
        output = functional_call(module, {**values, **copies}, args, kwargs)
        output_leaves = tree_flatten(output)[0]
        return tuple(output_leaves[i] for i in kept)

    if batched:

        def per_sample(
            tensors: tuple[Tensor, ...], sample_cotangents: tuple[Tensor, ...]
        ) -> dict[str, Tensor]:
            tensors = tuple(tensor.unsqueeze(0) for tensor in tensors)
            vjp_fn = vjp(lambda values: replay(values, tensors), primals)[1]
            rows = tuple(cotangent.unsqueeze(1) for cotangent in sample_cotangents)
            return _pull_back_rows(vjp_fn, rows)

        try:
            per_sample_jacobians = vmap(per_sample, in_dims=(0, 1), randomness="error")(
                inputs, cotangents
            )
        except RuntimeError as error:
            if "random" not in str(error):
                raise
            raise _randomness_error(module) from error
        return [per_sample_jacobians[name].transpose(0, 1) for name, _ in named_parameters]

    states = _rng_states(primals.values())
    vjp_fn = vjp(lambda values: replay(values, inputs), primals)[1]
    if any(
        not torch.equal(before, after)
        for before, after in zip(states, _rng_states(primals.values()), strict=True)
    ):
        raise _randomness_error(module)
    jacobians = _pull_back_rows(vjp_fn, cotangents)
    return [jacobians[name].unsqueeze(1) for name, _ in named_parameters]


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


def _is_plain_linear_call(
    call: ModuleCall, deltas: list[Tensor | None], named_parameters: NamedParameters
) -> bool:
    return (
        isinstance(call.module, nn.Linear)
        and type(call.module).forward is nn.Linear.forward
        and len(call.args) == 1
        and isinstance(call.args[0], Tensor)
        and not call.kwargs
        and len(deltas) == 1
        and deltas[0] is not None
        and {name for name, _ in named_parameters} <= {"weight", "bias"}
    )


def linear_gramian(
    module: nn.Module,
    x: Tensor,
    delta: Tensor,
    named_parameters: NamedParameters,
    batched: bool,
) -> Tensor:
    r"""Gramian of a call ``y = x Wᵀ + b`` of :class:`torch.nn.Linear`, without its Jacobian.

    With ``x`` ``[B, S, in]`` and ``δ`` ``[T, B, S, out]`` (``S`` gathers the extra dimensions),
    the gradient of row ``(t, b)`` w.r.t. ``W`` is ``Σ_s δ[t, b, s]ᵀ x[b, s]``, so

    .. math:: G_W[(t, b), (u, c)] = \sum_{s, r} \langle δ_{tbs}, δ_{ucr} \rangle
        \langle x_{bs}, x_{cr} \rangle,

    which is ``(δ δᵀ) ⊙ (x xᵀ)`` when ``S = 1``. For large ``S`` the per-row gradients are
    cheaper and are formed instead. The bias adds ``(Σ_s δ)(Σ_s δ)ᵀ``.
    """
    names = {name for name, _ in named_parameters}
    in_features = x.shape[-1]
    rows = delta.shape[0]
    samples = x.shape[0] if batched else 1
    x = x.reshape(samples, -1, in_features)
    delta = delta.reshape(rows, samples, x.shape[1], -1)
    out_features = delta.shape[-1]
    size = rows * samples
    positions = x.shape[1]
    gramian = delta.new_zeros(size, size)
    if "weight" in names:
        if positions == 1:
            flat_delta = delta.reshape(size, out_features)
            flat_x = x.reshape(samples, in_features)
            gramian += (flat_delta @ flat_delta.T) * (flat_x @ flat_x.T).repeat(rows, rows)
        elif (size * positions) ** 2 <= size * in_features * out_features:
            x_kernel = torch.einsum("bsi,cri->bscr", x, x)
            delta_kernel = torch.einsum("tbso,ucro->tbsucr", delta, delta)
            gramian += torch.einsum("tbsucr,bscr->tbuc", delta_kernel, x_kernel).reshape(size, size)
        else:
            weight_jacobian = torch.einsum("tbso,bsi->tboi", delta, x).reshape(size, -1)
            gramian += weight_jacobian @ weight_jacobian.T
    if "bias" in names:
        bias_jacobian = delta.sum(dim=2).reshape(size, out_features)
        gramian += bias_jacobian @ bias_jacobian.T
    return gramian
