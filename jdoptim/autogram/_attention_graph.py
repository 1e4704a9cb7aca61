"""The projections of a self-attention call, read from its part of the autograd graph.

The closed form of multi-head attention needs the gradients w.r.t. the outputs of the input
projection and the input of the output projection (the heads' merged attention). Both exist in
the graph of the forward pass: ``nn.MultiheadAttention`` computes the fused query-key-value
projection of a self-attention call (query, key and value the same tensor) with one matrix
product by ``in_proj_weight``, and the output projection with one product by
``out_proj.weight``, each saving its input. A call whose graph shows exactly these two products
gets an extra output edge at the fused projection's product: the single backward pass of the
engine then hands it that gradient, and neither the attention nor its backward pass is
recomputed. Any other shape of graph (separate projections, cross-attention, a future change
of torch's implementation) keeps the recomputation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, Node

from ._module_hooks import ModuleCall

#: Nodes of the matrix products of a linear map and the name of their saved input.
_PRODUCTS = {"MmBackward0": "_saved_self", "AddmmBackward0": "_saved_mat1"}


def with_projection_edge(call: ModuleCall) -> ModuleCall | None:
    """A copy of a self-attention ``call`` that also receives its fused projection's gradient.

    Its ``inner_saved`` are the projection's input and the output projection's input, both
    ``[L N, E]`` with rows ``(l, n)`` (sequence first); None when the graph does not show them.
    """
    module = call.module
    assert isinstance(module, nn.MultiheadAttention)
    if not module._qkv_same_embed_dim or module.in_proj_weight is None:
        return None
    if any(enabled for _, enabled, _ in call.autocast):
        return None
    if module.training and module.dropout > 0.0:
        return None  # The replay explains that random numbers cannot be reproduced.
    if not call.output_edges or call.output_edges[0] is None:
        return None
    if any(edge is not None for edge in call.output_edges[1:]):
        return None  # The attention weights receive gradient: the recomputation handles it.
    query, key, value = (
        _argument(call, i, name) for i, name in enumerate(("query", "key", "value"))
    )
    if not (isinstance(query, Tensor) and _same_view(query, key) and _same_view(query, value)):
        return None
    products = _products_of(call, [module.in_proj_weight, module.out_proj.weight])
    projections, outputs = products
    if len(projections) != 1 or len(outputs) != 1:
        return None
    projection, output = projections[0], outputs[0]
    try:
        projected_input = getattr(projection, _PRODUCTS[projection.name()])
        attended = getattr(output, _PRODUCTS[output.name()])
    except RuntimeError:  # Saved tensors already freed.
        return None
    dim = module.embed_dim
    rows = query.shape[:-1].numel()
    if not (
        isinstance(projected_input, Tensor)
        and isinstance(attended, Tensor)
        and projected_input.shape == (rows, dim)
        and attended.shape == (rows, dim)
    ):
        return None
    return dataclasses.replace(
        call,
        output_edges=[*call.output_edges, GradientEdge(projection, 0)],
        output_shapes=[*call.output_shapes, torch.Size((rows, 3 * dim))],
        output_sums=[*call.output_sums, None],
        inner_saved=(projected_input.detach(), attended.detach()),
        backward_target="in_proj_weight",
        backward_edge=_input_edge(projection),
    )


def _argument(call: ModuleCall, index: int, name: str) -> object:
    """The argument ``name`` of the call, the ``index``-th of ``nn.MultiheadAttention.forward``
    (after ``self``): binding the whole signature with :mod:`inspect` costs more than the rest
    of the test."""
    return call.args[index] if len(call.args) > index else call.kwargs.get(name)


def _input_edge(projection: Node) -> GradientEdge | None:
    """The edge of the projection's input (its first operand), when it requires grad.

    Asking the backward pass for that gradient makes the projection's node run, as reaching
    ``in_proj_weight`` would, but without the weight's gradient (``3E × E`` from ``L N`` rows):
    the input's gradient is computed anyway whenever a layer before the call is trained.
    """
    node, output_nr = projection.next_functions[0]
    return None if node is None else GradientEdge(node, output_nr)


def _same_view(first: Tensor, second: object) -> bool:
    """Whether ``second`` is a tensor viewing the same values as ``first``."""
    return (
        isinstance(second, Tensor)
        and second.data_ptr() == first.data_ptr()
        and second.shape == first.shape
        and second.stride() == first.stride()
        and second.dtype == first.dtype
    )


def _products_of(call: ModuleCall, weights: list[Tensor]) -> list[list[Node]]:
    """Per weight, the matrix-product nodes inside ``call`` that multiply by its transpose."""
    found: list[list[Node]] = [[] for _ in weights]
    index = {id(weight): i for i, weight in enumerate(weights)}
    edge = call.output_edges[0]
    assert edge is not None
    stack: list[Node] = [edge.node]
    seen: set[Node] = set()
    while stack:
        node = stack.pop()
        if node in seen or node in call.input_nodes:
            continue
        seen.add(node)
        is_product = node.name() in _PRODUCTS
        for next_node, _ in node.next_functions:
            if next_node is None:
                continue
            if is_product and next_node.name() == "TBackward0":
                leaf = next_node.next_functions[0][0]
                variable = getattr(leaf, "variable", None)
                if variable is not None and id(variable) in index:
                    found[index[id(variable)]].append(node)
            stack.append(next_node)
    return found
