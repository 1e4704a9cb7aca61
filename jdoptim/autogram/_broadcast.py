"""Per-sample gradients of a shared output that is only added into batched tensors.

A position embedding's output ``P`` (``[T, d]``, no batch) usually enters the model as
``h = e + P`` with ``h`` batched (``[B, T, d]``). The gradient of the losses w.r.t. ``h`` is
batched too, and sample ``b``'s gradient w.r.t. ``P`` is its slice ``b`` summed over the
broadcast dimensions. So the call needs no backward pass per loss: it joins the batched calls,
as a call on its input repeated for every sample whose outputs are the sums ``h``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, Node

from ._embedding import is_plain_embedding
from ._linear import is_plain_linear
from ._module_hooks import ModuleCall
from ._normalization import is_plain_normalization
from ._sharing import EdgeKey, Signature, batched_edges, signature


def _eligible(call: ModuleCall) -> bool:
    """A closed-form layer called on one tensor, with one differentiable output."""
    module = call.module
    closed_form = is_plain_linear(module) or is_plain_embedding(module)
    closed_form = closed_form or is_plain_normalization(module)
    edges = [edge for edge in call.output_edges if edge is not None]
    return (
        closed_form
        and len(call.args) == 1
        and isinstance(call.args[0], Tensor)
        and not call.kwargs
        and len(edges) == 1
    )


def _consumer_shape(node: Node) -> tuple[int, ...] | None:
    metadata = getattr(node, "_input_metadata", None)
    if not metadata or len(metadata) != 1:
        return None
    return tuple(metadata[0].shape)


def per_sample_stand_ins(
    output: Tensor,
    batch_dim: int,
    samples: int,
    shared: set[ModuleCall],
    verdicts: dict[tuple[Signature, tuple[tuple[int, ...], ...]], bool],
) -> dict[ModuleCall, ModuleCall]:
    """Stand-ins computed sample by sample for the shared calls that allow it.

    A shared call qualifies when it is a closed-form layer whose single output ``P`` is only
    consumed by additions (``AddBackward0`` with ``alpha = 1``) whose result is batched on its
    first dimension and has more dimensions than ``P``. The stand-in's input is the call's
    input repeated for every sample, its output edges are those of the sums, and its
    ``broadcast_shape`` is ``P``'s shape.
    """
    candidates = {}
    for call in shared:
        if _eligible(call):
            edge = next(e for e in call.output_edges if e is not None)
            candidates[(edge.node, edge.output_nr)] = call
    if not candidates or output.grad_fn is None:
        return {}
    consumers: dict[ModuleCall, list[Node]] = {call: [] for call in candidates.values()}
    refused: set[ModuleCall] = set()
    stack: list[Node] = [output.grad_fn]
    seen: set[Node] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for next_node, number in node.next_functions:
            if next_node is None:
                continue
            consumed = candidates.get((next_node, number))
            if consumed is not None:
                is_sum = type(node).__name__ == "AddBackward0"
                if is_sum and getattr(node, "_saved_alpha", None) == 1:
                    consumers[consumed].append(node)
                else:
                    refused.add(consumed)
            stack.append(next_node)

    stand_ins: dict[ModuleCall, ModuleCall] = {}
    pending: dict[ModuleCall, tuple[Signature, tuple[tuple[int, ...], ...]]] = {}
    for call, nodes in consumers.items():
        if call in refused or not nodes:
            continue
        shape = _output_shape(call)
        shapes = tuple(_consumer_shape(node) or () for node in nodes)
        if any(len(s) <= len(shape) or s[0] != samples for s in shapes):
            continue
        key = (signature(call, samples, batch_dim), shapes)
        if key not in verdicts:
            pending[call] = key
        elif verdicts[key]:
            stand_ins[call] = _stand_in(call, nodes, shape, samples)
    if pending:
        edges: dict[EdgeKey, GradientEdge] = {
            (node, 0): GradientEdge(node, 0) for call in pending for node in consumers[call]
        }
        batched = batched_edges(output, batch_dim, samples, edges)
        for call, key in pending.items():
            verdicts[key] = all(batched[(node, 0)] for node in consumers[call])
            if verdicts[key]:
                stand_ins[call] = _stand_in(call, consumers[call], _output_shape(call), samples)
    return stand_ins


def _output_shape(call: ModuleCall) -> tuple[int, ...]:
    pairs = zip(call.output_shapes, call.output_edges, strict=True)
    return tuple(next(shape for shape, edge in pairs if edge is not None))


def _stand_in(
    call: ModuleCall, nodes: list[Node], shape: tuple[int, ...], samples: int
) -> ModuleCall:
    x = call.args[0]
    repeated = x.unsqueeze(0).expand(samples, *x.shape)
    return dataclasses.replace(
        call,
        args=(repeated,),
        output_edges=[GradientEdge(node, 0) for node in nodes],
        output_shapes=[torch.Size(shape)] * len(nodes),
        output_sums=[None] * len(nodes),
        broadcast_shape=torch.Size(shape),
    )


def reduce_to_broadcast(deltas: list[Tensor | None], shape: torch.Size) -> Tensor | None:
    """Sample ``b``'s gradient w.r.t. the shared output: the sums' slices summed to ``shape``.

    Each delta is ``[T, B, *sum_shape]``; the result is ``[T, B, *shape]``.
    """
    total: Tensor | None = None
    for delta in deltas:
        if delta is None:
            continue
        extra = delta.dim() - 2 - len(shape)
        if extra:
            delta = delta.sum(dim=tuple(range(2, 2 + extra)))
        delta = delta.sum_to_size(*delta.shape[:2], *shape)
        total = delta if total is None else total + delta
    return total
