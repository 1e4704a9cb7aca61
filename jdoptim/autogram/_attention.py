"""Gramian of a call of ``nn.MultiheadAttention`` from its token-wise projections.

The parameters of multi-head attention are only used in linear maps applied token by token:
the input projections of the query, key and value, and the output projection. The attention
between them has no parameters. Its backward pass, applied to the gradients of the losses
w.r.t. the call's output, gives the gradients w.r.t. the projections' outputs; each
projection's Gramian then follows from its input and those gradients, as for ``nn.Linear``.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._linear import linear_gramian
from ._module_hooks import ModuleCall, slice_sums

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def is_plain_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.MultiheadAttention`` without extra key/value biases."""
    return (
        isinstance(module, nn.MultiheadAttention)
        and type(module).forward is nn.MultiheadAttention.forward
        and module.bias_k is None
        and not module.add_zero_attn
    )


def attention_gramian(
    call: ModuleCall, deltas: list[Tensor | None], names: set[str], batched: bool
) -> Tensor | None:
    """The Gramian of a call of multi-head attention, or None when it must be replayed.

    None when the call ran under autocast or with dropout, when the attention weights it
    returned receive gradients, or when recomputing the call does not give its recorded output.
    """
    module = call.module
    assert isinstance(module, nn.MultiheadAttention)
    if any(enabled for _, enabled, _ in call.autocast):
        return None
    if module.training and module.dropout > 0.0:
        return None
    if call.inner_saved:
        return _from_graph(call, deltas, names, batched)
    if deltas[0] is None or any(d is not None for d in deltas[1:]):
        return None
    bound = _SIGNATURE.bind(module, *call.args, **call.kwargs)
    bound.apply_defaults()
    arguments = bound.arguments
    query, key, value = arguments["query"], arguments["key"], arguments["value"]
    if not all(isinstance(t, Tensor) for t in (query, key, value)):
        return None
    unbatched = query.dim() == 2
    if batched and (unbatched or not module.batch_first):
        return None
    delta = deltas[0]

    def batch_first(t: Tensor) -> Tensor:
        if unbatched:
            return t.unsqueeze(0)
        return t if module.batch_first else t.transpose(0, 1)

    rows = delta.shape[0]
    q_in, k_in, v_in = batch_first(query), batch_first(key), batch_first(value)
    delta = torch.stack([batch_first(d) for d in delta.unbind(0)])
    if module._qkv_same_embed_dim:
        assert module.in_proj_weight is not None
        weights = list(module.in_proj_weight.detach().chunk(3))
    else:
        weights = [
            w.detach() for w in (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        ]
    biases = [None] * 3 if module.in_proj_bias is None else module.in_proj_bias.detach().chunk(3)
    projected = [
        F.linear(x, w, b).detach().requires_grad_()
        for x, w, b in zip((q_in, k_in, v_in), weights, biases, strict=True)
    ]
    with torch.enable_grad():
        attended = _attend(module, projected[0], projected[1], projected[2], arguments)
    out_weight = module.out_proj.weight.detach()
    out_bias = None if module.out_proj.bias is None else module.out_proj.bias.detach()
    output = F.linear(attended.detach(), out_weight, out_bias)
    if not _matches_recorded(call, output, unbatched, module.batch_first):
        return None
    delta_attended = delta.to(out_weight.dtype) @ out_weight  # [R, N, L, E]
    grads = torch.autograd.grad(
        attended,
        projected,
        delta_attended if rows > 1 else delta_attended[0],
        is_grads_batched=rows > 1,
    )
    if rows == 1:
        grads = tuple(g.unsqueeze(0) for g in grads)
    gramian = linear_gramian(
        module.out_proj, attended.detach(), delta, _names(names, "out_proj."), batched
    )
    in_names = _names(names, "in_proj_")
    for index, (x, grad) in enumerate(zip((q_in, k_in, v_in), grads, strict=True)):
        parts = set()
        if "bias" in in_names:
            parts.add("bias")
        if "weight" in in_names or f"{'qkv'[index]}_proj_weight" in names:
            parts.add("weight")
        if parts:
            gramian = gramian + linear_gramian(module, x, grad, parts, batched)
    return gramian


def _from_graph(
    call: ModuleCall, deltas: list[Tensor | None], names: set[str], batched: bool
) -> Tensor:
    """The Gramian of a self-attention call whose projections were read from the graph.

    ``deltas[0]`` is the gradient w.r.t. the call's output, ``deltas[-1]`` w.r.t. the fused
    projection's output (``[R, L N, 3E]``, rows ``(l, n)``); ``call.inner_saved`` holds the
    projection's input and the output projection's input (see ``_attention_graph``).
    """
    module = call.module
    assert isinstance(module, nn.MultiheadAttention)
    projected_input, attended = call.inner_saved
    delta, projection_delta = deltas[0], deltas[-1]
    shape = call.output_shapes[0]
    if len(shape) == 2:  # one unbatched sequence [L, E]
        samples, positions = 1, shape[0]
    else:
        samples, positions = (shape[0], shape[1]) if module.batch_first else (shape[1], shape[0])
    dim = module.embed_dim
    rows = next(d for d in (delta, projection_delta) if d is not None).shape[0]
    if delta is None:
        delta = attended.new_zeros(rows, samples, positions, dim)
    elif len(shape) == 2:
        delta = delta.unsqueeze(1)
    elif not module.batch_first:
        delta = delta.transpose(1, 2)
    if projection_delta is None:
        projection_delta = attended.new_zeros(rows, positions * samples, 3 * dim)

    def per_sample(t: Tensor) -> Tensor:  # [.., L N, F] (rows (l, n)) -> [.., N, L, F]
        return t.reshape(*t.shape[:-2], positions, samples, t.shape[-1]).transpose(-3, -2)

    gramian = linear_gramian(
        module.out_proj, per_sample(attended), delta, _names(names, "out_proj."), batched
    )
    parts = _names(names, "in_proj_")
    if parts:
        gramian = gramian + linear_gramian(
            module, per_sample(projected_input), per_sample(projection_delta), parts, batched
        )
    return gramian


def _names(names: set[str], prefix: str) -> set[str]:
    return {name[len(prefix) :] for name in names if name.startswith(prefix)}


def _attend(
    module: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor, arguments: dict[str, object]
) -> Tensor:
    """The heads' attention, merged: ``[N, L, E]`` from the projections ``[N, L|S, E]``."""
    batch, length, dim = q.shape
    heads = module.num_heads
    head_dim = dim // heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(batch, t.shape[1], heads, head_dim).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(head_dim)
    source = k.shape[1]
    attn_mask = arguments["attn_mask"]
    padding = arguments["key_padding_mask"]
    if arguments["is_causal"] and attn_mask is None:
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
    if isinstance(attn_mask, Tensor):
        mask = _additive(attn_mask, scores.dtype)
        if mask.dim() == 3:
            mask = mask.reshape(batch, heads, length, source)
        scores = scores + mask
    if isinstance(padding, Tensor):
        mask = _additive(padding, scores.dtype).reshape(batch, 1, 1, source)
        scores = scores + mask
    result = scores.softmax(dim=-1) @ split(v)
    return result.transpose(1, 2).reshape(batch, length, dim)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def _matches_recorded(call: ModuleCall, output: Tensor, unbatched: bool, batch_first: bool) -> bool:
    """Whether the recomputed output sums, slice by slice, as the recorded one."""
    recorded = call.output_sums[0] if call.output_sums else None
    if recorded is None:
        return False
    if unbatched:
        output = output[0]
    elif not batch_first:
        output = output.transpose(0, 1)
    total, magnitude, dtype = recorded
    sums = slice_sums(output)[0]
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    return sums.shape == total.shape and bool(
        ((sums - total).abs() <= tolerance * (magnitude + 1e-30)).all()
    )
