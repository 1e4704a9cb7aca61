"""Recording of the calls of the engine's modules during the forward pass."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.hooks import RemovableHandle

from ._autocast import AutocastState, accumulation_dtype, autocast_states


@dataclass(eq=False, slots=True)
class ModuleCall:
    """What the engine needs to know about one call of one module of the engine.

    ``args`` and ``kwargs`` hold detached aliases of the call's inputs (they share the version
    counters of the originals, so that later in-place modifications are detected). The outputs
    are only known through their gradient edges (``output_edges[i]`` for the i-th leaf of the
    output pytree, ``None`` for leaves that are not differentiable tensors): keeping edges
    rather than tensors lets the output be modified in place after the call (the edge still
    points at the value the module returned) and does not keep its memory alive.
    """

    module: nn.Module
    parent: ModuleCall | None
    versions_before: dict[int, int] = field(default_factory=dict)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_tensors: list[Tensor] = field(default_factory=list)
    input_versions: list[int] = field(default_factory=list)
    input_nodes: set[Node] = field(default_factory=set)
    output_edges: list[GradientEdge | None] = field(default_factory=list)
    output_shapes: list[torch.Size] = field(default_factory=list)
    #: Per output: its slice sums (see :func:`slice_sums`) and the dtype it was computed in.
    output_sums: list[tuple[Tensor, Tensor, torch.dtype] | None] = field(default_factory=list)
    modifies_inputs: bool = False
    complete: bool = False
    #: Autocast as it was during the call, so that a replay computes in the same dtypes.
    autocast: tuple[AutocastState, ...] = ()
    #: For a stand-in of a call without a batch dimension (see ``_broadcast``): the shape of
    #: its output, whose per-sample gradient is the sum of its outputs' gradients reduced to it.
    broadcast_shape: torch.Size | None = None
    #: Tensors read from the call's part of the autograd graph, for a closed form that needs
    #: intermediate values of the call (see ``_attention_graph``); its extra output edges, at
    #: the end of ``output_edges``, point inside the call.
    inner_saved: tuple[Tensor, ...] = ()
    #: The name of the parameter that the single backward pass must reach so that the nodes of
    #: those inner edges run (``None``: any parameter of the call).
    backward_target: str | None = None
    #: Or, in its place, an edge inside the call whose gradient the pass asks for: it makes
    #: those nodes run without computing the gradient of a large weight.
    backward_edge: GradientEdge | None = None

    @property
    def effective_parent(self) -> ModuleCall | None:
        """The innermost enclosing call whose outputs are known (incomplete ones are skipped)."""
        parent = self.parent
        while parent is not None and not parent.output_edges:
            parent = parent.parent
        return parent


def slice_sums(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """Sums and sums of absolute values of the slices of ``tensor`` along its first dimension.

    A cheap fingerprint of an output, checked against the replay of the call. The sums are
    taken over the other dimensions in place: reshaping a non-contiguous output (e.g. the
    transposed output of a batch-first attention) would copy it.
    """
    if tensor.dim() < 2:
        tensor = tensor.reshape(tensor.shape[0] if tensor.dim() else 1, 1)
    dims = tuple(range(1, tensor.dim()))
    # In float32 at least: sums of half-precision outputs overflow.
    tensor = tensor.to(accumulation_dtype(tensor.dtype))
    return tensor.sum(dim=dims), tensor.abs().sum(dim=dims)


def _is_atom(value: Any) -> bool:
    """Whether ``value`` is a leaf of every pytree (no container to flatten)."""
    return value is None or isinstance(value, (Tensor, bool, int, float, str))


def _leaves(tree: Any) -> list[Any]:
    """The leaves of ``tree``; a tensor or a flat tuple of atoms without the pytree walk."""
    if _is_atom(tree):
        return [tree]
    if type(tree) is tuple and all(_is_atom(value) for value in tree):
        return list(tree)
    return tree_flatten(tree)[0]


def _tensor_leaves(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Tensor]:
    tensors = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            tensors.append(value)
        elif not _is_atom(value):
            leaves = tree_flatten((args, kwargs))[0]
            return [leaf for leaf in leaves if isinstance(leaf, Tensor)]
    return tensors


def _node(tensor: Tensor) -> Node:
    """The node of ``tensor``'s gradient edge (its ``grad_fn``, without building the edge)."""
    node = tensor.grad_fn
    return get_gradient_edge(tensor).node if node is None else node


def _edge(tensor: Tensor) -> GradientEdge:
    """``get_gradient_edge(tensor)``, built directly for the nodes of torch's own operations
    (those of custom autograd functions need the ownership token that it adds)."""
    node = tensor.grad_fn
    if node is None or isinstance(node, torch._C._FunctionBase):
        return get_gradient_edge(tensor)
    return GradientEdge(node, tensor.output_nr)


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


class CallRecorder:
    """Forward hooks that record, on each module, the calls made while gradients are enabled.

    The hooks hold the recorder weakly: when the recorder is garbage-collected, they do nothing
    and the recorder's finaliser removes them.
    """

    def __init__(
        self, modules: list[nn.Module], needs_checksums: Callable[[nn.Module], bool]
    ) -> None:
        self.calls: list[ModuleCall] = []
        self._needs_checksums = needs_checksums
        self.enabled = True
        self._stack: list[ModuleCall] = []
        self._handles: list[RemovableHandle] = []
        reference = weakref.ref(self)
        for module in modules:
            self._handles.append(
                module.register_forward_pre_hook(_make_pre_hook(reference), with_kwargs=True)
            )
            self._handles.append(
                module.register_forward_hook(_make_hook(reference), with_kwargs=True)
            )
        weakref.finalize(self, _remove_handles, list(self._handles))

    def take_calls(self) -> list[ModuleCall]:
        """Returns the complete calls recorded so far and forgets every record."""
        calls = [call for call in self.calls if call.complete]
        self.calls = []
        self._stack = []
        return calls

    def remove(self) -> None:
        """Removes the hooks and forgets every record."""
        _remove_handles(self._handles)
        self.take_calls()

    def _should_record(self) -> bool:
        return self.enabled and torch.is_grad_enabled()

    def _on_call_start(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if not (self.enabled and torch.is_grad_enabled()):
            return
        stack = self._stack
        inputs = _tensor_leaves(args, kwargs)
        versions: dict[int, int] = {}
        nodes: set[Node] = set()
        on_cuda = False
        for tensor in inputs:
            versions[id(tensor)] = tensor._version
            on_cuda = on_cuda or tensor.is_cuda
            if tensor.requires_grad:
                # Taken before the forward: a module modifying an input in place changes its node.
                nodes.add(_node(tensor))
        if not on_cuda:
            on_cuda = any(p is not None and p.is_cuda for p in module._parameters.values())
        call = ModuleCall(
            module=module,
            parent=stack[-1] if stack else None,
            versions_before=versions,
            input_nodes=nodes,
            autocast=autocast_states(("cuda",) if on_cuda else ()),
        )
        stack.append(call)
        self.calls.append(call)

    def _on_call_end(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        # Pop until this module's frame: frames left by a forward that raised are discarded.
        call = None
        while self._stack:
            frame = self._stack.pop()
            if frame.module is module:
                call = frame
                break
        if call is None:
            return
        values = (*args, *kwargs.values())
        if all(_is_atom(value) for value in values):
            inputs = [value for value in values if isinstance(value, Tensor)]
            call.args = tuple(_detach(value) for value in args)
            call.kwargs = {name: _detach(value) for name, value in kwargs.items()}
            # The same detached aliases, in the order of ``inputs``.
            call.input_tensors = [
                value for value in (*call.args, *call.kwargs.values()) if isinstance(value, Tensor)
            ]
        else:
            inputs = _tensor_leaves(args, kwargs)
            call.args = tree_map(_detach, tuple(args))
            call.kwargs = tree_map(_detach, dict(kwargs))
            call.input_tensors = [t.detach() for t in inputs]
        before = call.versions_before
        versions = [t._version for t in inputs]
        call.input_versions = versions
        pairs = zip(inputs, versions, strict=True)
        call.modifies_inputs = any(before.get(id(t), version) != version for t, version in pairs)
        if not call.modifies_inputs:
            call.input_nodes.update(_node(t) for t in inputs if t.requires_grad)
        checksums = self._needs_checksums(module)
        for leaf in _leaves(output):
            edge = None
            sums: tuple[Tensor, Tensor, torch.dtype] | None = None
            if isinstance(leaf, Tensor):
                call.output_shapes.append(leaf.shape)
                if leaf.requires_grad:
                    edge = _edge(leaf)
                    if edge.node in call.input_nodes:
                        edge = None  # An input passed through unchanged: not produced here.
                    elif checksums:
                        sums = (*slice_sums(leaf.detach()), leaf.dtype)
            else:
                call.output_shapes.append(torch.Size())
            call.output_edges.append(edge)
            call.output_sums.append(sums)
        if all(edge is None for edge in call.output_edges):
            call.output_edges = []
        call.complete = True


HookRef = weakref.ReferenceType[CallRecorder]


# torch calls the hooks of a module from a copy of its hook dictionaries taken before the first
# one: a hook removed meanwhile (its recorder garbage-collected, or ``Engine.remove`` called by
# an earlier hook) is still called, without its keyword arguments, since its flag asking for
# them is already gone. Such a call has one argument fewer and records nothing.


def _make_pre_hook(reference: HookRef) -> Callable[..., None]:
    def pre_hook(module: nn.Module, args: Any, *kwargs: Any) -> None:
        recorder = reference()
        if recorder is not None and kwargs:
            recorder._on_call_start(module, args, kwargs[0])

    return pre_hook


def _make_hook(reference: HookRef) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, *kwargs_and_output: Any) -> None:
        recorder = reference()
        if recorder is not None and len(kwargs_and_output) == 2:
            recorder._on_call_end(module, args, *kwargs_and_output)

    return hook


def _remove_handles(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
