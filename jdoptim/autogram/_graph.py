"""Walk of the autograd graph: which recorded call uses which parameter of the engine."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.autograd.graph import Node

from ._module_hooks import ModuleCall


@dataclass(frozen=True)
class EngineParameter:
    """A parameter of the engine's modules with a name for error messages."""

    parameter: nn.Parameter
    name: str


def find_used_parameters(
    output: Tensor,
    calls: list[ModuleCall],
    parameters: dict[int, EngineParameter],
) -> dict[ModuleCall, list[tuple[str, nn.Parameter]]]:
    """Maps each call to the parameters of the engine it uses, named relative to its module.

    The graph of ``output`` is walked from the output to the leaves. Every node belongs to a
    *region*: the innermost recorded call whose computation it is part of, or no call at all.
    The walk enters a call's region at the nodes that produced its outputs and leaves it at the
    nodes that produced its inputs. A parameter reached in the region of a call of module ``m``
    is used by that call and must belong to ``m``; a parameter of the engine reached anywhere
    else receives gradient through a computation that no call can reproduce, and is an error.

    Raises:
        ValueError: if a parameter of the engine is used outside the forward of its modules.
    """
    calls_by_output_node: dict[Node, list[ModuleCall]] = {}
    for call in calls:
        for edge in call.output_edges:
            if edge is not None:
                calls_by_output_node.setdefault(edge.node, []).append(call)

    parent_of = {call: call.effective_parent for call in calls}
    owned_names: dict[nn.Module, dict[int, str]] = {}
    used: dict[ModuleCall, dict[int, tuple[str, nn.Parameter]]] = {}

    root = output.grad_fn
    if root is None:
        return {}
    to_visit: list[tuple[Node, ModuleCall | None]] = [(root, None)]
    visited: set[tuple[Node, int]] = set()
    while to_visit:
        node, region = to_visit.pop()
        while region is not None and node in region.input_nodes:
            region = parent_of[region]
        if node in calls_by_output_node:
            region = _enter(node, region, calls_by_output_node, parent_of)
        key = (node, id(region))
        if key in visited:
            continue
        visited.add(key)

        next_functions = node.next_functions
        if not next_functions:
            # Only leaves (``AccumulateGrad``) hold a variable; asking another node raises
            # inside ``getattr``, which made most of the walk's cost.
            variable = getattr(node, "variable", None)
            if isinstance(variable, Tensor) and id(variable) in parameters:
                _record_use(variable, region, parameters, owned_names, used)
        for next_node, _ in next_functions:
            if next_node is not None:
                to_visit.append((next_node, region))
    return {call: list(named.values()) for call, named in used.items()}


def _enter(
    node: Node,
    region: ModuleCall | None,
    calls_by_output_node: dict[Node, list[ModuleCall]],
    parent_of: dict[ModuleCall, ModuleCall | None],
) -> ModuleCall | None:
    """The innermost region that ``node`` belongs to, entering nested calls that output it."""
    entered = True
    while entered:
        entered = False
        for call in calls_by_output_node.get(node, ()):
            if call is not region and parent_of[call] is region:
                region = call
                entered = True
                break
    return region


def _record_use(
    variable: Tensor,
    region: ModuleCall | None,
    parameters: dict[int, EngineParameter],
    owned_names: dict[nn.Module, dict[int, str]],
    used: dict[ModuleCall, dict[int, tuple[str, nn.Parameter]]],
) -> None:
    engine_parameter = parameters[id(variable)]
    if region is not None:
        module = region.module
        if module not in owned_names:
            owned_names[module] = {id(p): n for n, p in module.named_parameters()}
        name = owned_names[module].get(id(variable))
        if name is not None:
            used.setdefault(region, {})[id(variable)] = (name, engine_parameter.parameter)
            return
    if region is None:
        where = (
            "outside any recorded call of the engine's modules (the forward must run after the "
            "`Engine` is created, with gradients enabled, and each forward serves one "
            "`compute_gramian`)"
        )
    else:
        where = f"inside the forward of {type(region.module).__name__}, which does not own it"
    raise ValueError(
        f"The parameter `{engine_parameter.name}` of the engine's modules is used {where}: "
        "its contribution to the Gramian cannot be computed layer by layer. Use each parameter "
        "only inside the forward of a module that owns it (e.g. call the module instead of "
        "reading its weight, or share the parameter object between modules for weight tying), "
        "or leave this module out of the `Engine`."
    )
