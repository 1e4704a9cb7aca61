"""The backward pass that gives each call the gradients of the losses w.r.t. its outputs.

Two strategies, same result:

- one row (``T = 1``, e.g. one loss per sample with a batch dimension): a single backward pass
  in which hooks on the nodes that produced the calls' outputs hand each group of calls its
  gradients as soon as they are complete; the group's Gramian is formed right away and the
  gradients are released, so that at most a few of them are alive at once;
- several rows: one vectorised backward pass (``is_grads_batched``) returns the gradients of
  every row w.r.t. every output, and the groups are processed afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, Node
from torch.utils.hooks import RemovableHandle

from ._gramian import group_gramian
from ._module_hooks import ModuleCall

Used = dict[ModuleCall, list[tuple[str, nn.Parameter]]]
EdgeKey = tuple[Node, int]


def _key(edge: GradientEdge) -> EdgeKey:
    return (edge.node, edge.output_nr)


def accumulate_gramian(
    output: Tensor,
    grad_outputs: Tensor,
    rows: int,
    groups: list[list[ModuleCall]],
    used: Used,
    batched: bool,
    gramian: Tensor,
) -> None:
    """Adds the Gramian of every group to ``gramian`` (``[R, R]``), in place.

    ``grad_outputs`` (``[rows, *output.shape]``, or ``output.shape`` when ``rows == 1``) selects
    the rows: row ``t`` back-propagates ``grad_outputs[t]``.
    """
    if rows == 1:
        _accumulate_streaming(output, grad_outputs, groups, used, batched, gramian)
    else:
        deltas = output_gradients(output, grad_outputs, [c for g in groups for c in g], True)
        for group in groups:
            if any(d is not None for call in group for d in deltas[call]):
                gramian += group_gramian(group, deltas, used, batched).to(gramian.dtype)
            for call in group:
                del deltas[call]


def output_gradients(
    output: Tensor, grad_outputs: Tensor, calls: list[ModuleCall], batched_rows: bool
) -> dict[ModuleCall, list[Tensor | None]]:
    """Gradients ``[rows, *leaf.shape]`` of the rows w.r.t. every output of every call."""
    edges: dict[EdgeKey, GradientEdge] = {}
    for call in calls:
        for edge in call.output_edges:
            if edge is not None:
                edges.setdefault(_key(edge), edge)
    gradients = torch.autograd.grad(
        output,
        list(edges.values()),
        grad_outputs,
        retain_graph=True,
        allow_unused=True,
        is_grads_batched=batched_rows,
    )
    by_key = {
        key: g if g is None or batched_rows else g.unsqueeze(0)
        for key, g in zip(edges, gradients, strict=True)
    }
    return {
        call: [None if edge is None else by_key[_key(edge)] for edge in call.output_edges]
        for call in calls
    }


def _accumulate_streaming(
    output: Tensor,
    grad_outputs: Tensor,
    groups: list[list[ModuleCall]],
    used: Used,
    batched: bool,
    gramian: Tensor,
) -> None:
    deltas: dict[ModuleCall, list[Tensor | None]] = {
        call: [None] * len(call.output_edges) for group in groups for call in group
    }
    missing: dict[int, set[EdgeKey]] = {}
    waiting: dict[EdgeKey, list[tuple[int, ModuleCall, int]]] = {}
    for index, group in enumerate(groups):
        missing[index] = set()
        for call in group:
            for leaf, edge in enumerate(call.output_edges):
                if edge is not None:
                    missing[index].add(_key(edge))
                    waiting.setdefault(_key(edge), []).append((index, call, leaf))

    def receive(key: EdgeKey, gradient: Tensor | None) -> None:
        for index, call, leaf in waiting.pop(key, []):
            deltas[call][leaf] = None if gradient is None else gradient.unsqueeze(0)
            missing[index].discard(key)
            if not missing[index]:
                process(index)

    def process(index: int) -> None:
        group = groups[index]
        del missing[index]
        if any(d is not None for call in group for d in deltas[call]):
            gramian.add_(group_gramian(group, deltas, used, batched).to(gramian.dtype))
        for call in group:
            del deltas[call]

    def make_hook(node: Node) -> Callable[[tuple[Tensor | None, ...]], None]:
        def hook(node_grad_outputs: tuple[Tensor | None, ...]) -> None:
            for output_nr, gradient in enumerate(node_grad_outputs):
                if (node, output_nr) in waiting:
                    receive((node, output_nr), gradient)

        return hook

    handles: list[RemovableHandle] = []
    try:
        for node in {key[0] for key in waiting}:
            handles.append(node.register_prehook(make_hook(node)))
        targets = _cheapest_parameters(groups, used)
        # Tensors and gradient edges mixed, as torch.autograd.grad documents (not its stubs).
        torch.autograd.grad(
            output,
            targets,  # type: ignore[arg-type]
            grad_outputs,
            retain_graph=True,
            allow_unused=True,
        )
    finally:
        for handle in handles:
            handle.remove()
    if waiting:
        # Outputs whose node the pass did not need to execute: ask for their gradients.
        edges = {
            _key(edge): edge
            for group in groups
            for call in group
            for edge in call.output_edges
            if edge is not None and _key(edge) in waiting
        }
        gradients = torch.autograd.grad(
            output, list(edges.values()), grad_outputs, retain_graph=True, allow_unused=True
        )
        for key, gradient in zip(edges, gradients, strict=True):
            receive(key, gradient)


def _cheapest_parameters(
    groups: list[list[ModuleCall]], used: Used
) -> list[nn.Parameter | GradientEdge]:
    """For each call, its smallest used parameter: the pass must reach it through the call (or
    the edge inside the call that the call names instead, see ``ModuleCall.backward_edge``)."""
    targets: dict[object, nn.Parameter | GradientEdge] = {}
    for group in groups:
        for call in group:
            if call.backward_edge is not None:
                targets.setdefault(_key(call.backward_edge), call.backward_edge)
                continue
            named = dict(used[call])
            if call.backward_target in named:
                parameter = named[call.backward_target]
            else:
                parameter = min(named.values(), key=lambda p: p.numel())
            targets.setdefault(id(parameter), parameter)
    return list(targets.values())
