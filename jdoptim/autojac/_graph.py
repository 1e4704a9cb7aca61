"""Walks of the autograd graph: the leaves a computation depends on, in order of first use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

Edge = tuple[Any, int]


def leaves_in_order_of_first_use(
    roots: Sequence[Tensor], stop_at: Sequence[Tensor] = ()
) -> tuple[list[Tensor], list[bool]]:
    """The leaves requiring grad from which ``roots`` are computed, in order of first use.

    The order of first use sorts the leaves by the creation order (autograd sequence number) of
    the first operation that consumed them during the forward pass, then by position among that
    operation's inputs: for a ``torch.nn.Sequential`` it is the order of ``parameters()``.

    The walk does not go through the tensors of ``stop_at``; the second list says, for each of
    them, whether it was reached.
    """
    stop_edges: dict[Edge, int] = {}
    stop_leaves: dict[int, int] = {}
    for i, tensor in enumerate(stop_at):
        if tensor.grad_fn is None:
            stop_leaves[id(tensor)] = i
        else:
            stop_edges[(tensor.grad_fn, tensor.output_nr)] = i
    reached = [False] * len(stop_at)
    first_use: dict[int, tuple[int, int, Tensor]] = {}
    discovery = 0

    def visit_leaf(leaf: Tensor, consumer_order: int) -> None:
        nonlocal discovery
        if id(leaf) in stop_leaves:
            reached[stop_leaves[id(leaf)]] = True
            return
        key = (consumer_order, discovery)
        discovery += 1
        previous = first_use.get(id(leaf))
        if previous is None or key < previous[:2]:
            first_use[id(leaf)] = (*key, leaf)

    stack: list[Any] = []
    seen: set[Any] = set()
    for root in roots:
        if root.grad_fn is None:
            if root.requires_grad:
                visit_leaf(root, -1)
            continue
        edge = (root.grad_fn, root.output_nr)
        if edge in stop_edges:
            reached[stop_edges[edge]] = True
        elif root.grad_fn not in seen:
            seen.add(root.grad_fn)
            stack.append(root.grad_fn)
    while stack:
        node = stack.pop()
        order = node._sequence_nr()
        for child, input_nr in node.next_functions:
            if child is None:
                continue
            if (child, input_nr) in stop_edges:
                reached[stop_edges[(child, input_nr)]] = True
                continue
            variable = getattr(child, "variable", None)
            if isinstance(variable, Tensor):
                visit_leaf(variable, order)
            elif child not in seen:
                seen.add(child)
                stack.append(child)
    ordered = sorted(first_use.values(), key=lambda item: item[:2])
    return [leaf for _, _, leaf in ordered], reached
