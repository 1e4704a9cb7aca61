"""The shared engine of autojac: argument checks, graph walks and the chunked Jacobian product."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


def as_tensors(value: Tensor | Iterable[Tensor], name: str) -> list[Tensor]:
    """Turns a tensor or an iterable of tensors into a list, checking every element's type."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"`{name}` must be a torch.Tensor or a sequence of tensors, but got "
            f"{type(value).__name__}."
        )
    tensors = list(value)
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"`{name}` must contain only tensors, but element {i} is a {type(tensor).__name__}."
            )
    return tensors


def check_outputs(outputs: list[Tensor], name: str) -> None:
    """Checks that there is at least one output and that every output is differentiable."""
    if not outputs:
        raise ValueError(f"`{name}` must contain at least one tensor, but got an empty sequence.")
    for i, output in enumerate(outputs):
        if not output.requires_grad:
            raise ValueError(
                f"`{name}` must require grad (have a `grad_fn`), but element {i} of shape "
                f"{list(output.shape)} does not require grad."
            )


def check_require_grad(tensors: list[Tensor], name: str, hint: str = "") -> None:
    """Checks that there is at least one tensor and that every one requires grad; ``hint`` (e.g.
    ``" (compute it from ...)"``) ends the message about a tensor that does not."""
    if not tensors:
        raise ValueError(f"`{name}` must contain at least one tensor, but got an empty sequence.")
    for i, tensor in enumerate(tensors):
        if not tensor.requires_grad:
            raise ValueError(
                f"`{name}` must contain tensors that require grad, but element {i} of shape "
                f"{list(tensor.shape)} does not{hint}."
            )


def check_parallel_chunk_size(parallel_chunk_size: Any) -> None:
    """Checks that ``parallel_chunk_size`` is None or a positive int."""
    if parallel_chunk_size is None:
        return
    if isinstance(parallel_chunk_size, bool) or not isinstance(parallel_chunk_size, int):
        raise TypeError(
            "`parallel_chunk_size` must be None or a positive int, but got "
            f"{parallel_chunk_size!r}."
        )
    if parallel_chunk_size <= 0:
        raise ValueError(
            f"`parallel_chunk_size` must be None or a positive int, but got {parallel_chunk_size}."
        )


def check_no_duplicates(tensors: Sequence[Tensor], name: str) -> None:
    """Checks that no tensor appears twice in ``tensors``."""
    seen: set[int] = set()
    for i, tensor in enumerate(tensors):
        if id(tensor) in seen:
            raise ValueError(
                f"`{name}` must not contain the same tensor twice, but element {i} does."
            )
        seen.add(id(tensor))


def check_accumulable(tensors: Sequence[Tensor], name: str) -> None:
    """Checks that every tensor may receive a ``.jac``/``.grad`` field: a leaf or retaining grad."""
    for i, tensor in enumerate(tensors):
        if not tensor.requires_grad or not (tensor.is_leaf or tensor.retains_grad):
            raise ValueError(
                f"`{name}` must contain tensors that require grad and are leaves (or retain "
                f"grad), but element {i} of shape {list(tensor.shape)} has "
                f"requires_grad={tensor.requires_grad} and is_leaf={tensor.is_leaf}."
            )


def check_multipliers(
    multipliers: Tensor | Sequence[Tensor] | None,
    outputs: list[Tensor],
    name: str,
    leading_dim: bool,
) -> list[Tensor] | None:
    """Validates ``jac_tensors``/``jac_outputs`` (``leading_dim``) or ``grad_tensors`` shapes."""
    if multipliers is None:
        return None
    values = as_tensors(multipliers, name)
    if len(values) != len(outputs):
        raise ValueError(
            f"`{name}` must contain one tensor per output ({len(outputs)}), but got {len(values)}."
        )
    rows: int | None = None
    for i, (value, output) in enumerate(zip(values, outputs, strict=True)):
        expected = list(output.shape)
        shape = list(value.shape)
        if leading_dim:
            if value.dim() != output.dim() + 1 or shape[1:] != expected:
                raise ValueError(
                    f"`{name}` must have shape [m', *output.shape] for each output, but element "
                    f"{i} has shape {shape} for an output of shape {expected}."
                )
            if rows is not None and shape[0] != rows:
                raise ValueError(
                    f"`{name}` must have the same number of rows m' for every output, but "
                    f"element {i} has {shape[0]} rows and element 0 has {rows}."
                )
            rows = shape[0]
        elif shape != expected:
            raise ValueError(
                f"`{name}` must have the shape of its output, but element {i} has shape {shape} "
                f"for an output of shape {expected}."
            )
    return values


def get_jac(tensor: Tensor) -> Tensor | None:
    """The ``.jac`` field of ``tensor``, or None."""
    jacobian = getattr(tensor, "jac", None)
    return jacobian if isinstance(jacobian, Tensor) else None


def set_jac(tensor: Tensor, jacobian: Tensor) -> None:
    """Sets the ``.jac`` field of ``tensor``."""
    tensor.jac = jacobian  # type: ignore[attr-defined]


def delete_jac(tensor: Tensor) -> None:
    """Removes the ``.jac`` field of ``tensor`` (no-op when absent)."""
    if hasattr(tensor, "jac"):
        del tensor.jac


def number_of_rows(outputs: Sequence[Tensor], multipliers: Sequence[Tensor] | None) -> int:
    """The number m of rows of the Jacobian of ``outputs`` (pre-multiplied by ``multipliers``)."""
    if multipliers is not None:
        return multipliers[0].shape[0]
    return sum(output.numel() for output in outputs)


def check_jac_rows(tensors: Sequence[Tensor], m: int, name: str) -> None:
    """Checks that the existing ``.jac`` fields of ``tensors`` can accumulate ``m`` rows."""
    for i, tensor in enumerate(tensors):
        existing = get_jac(tensor)
        if existing is not None and list(existing.shape) != [m, *tensor.shape]:
            raise ValueError(
                f"`{name}` element {i} already has a `.jac` of shape {list(existing.shape)}, "
                f"which cannot accumulate a Jacobian of shape {[m, *tensor.shape]}; call "
                "`jac_to_grad` or delete the `.jac` field first."
            )


def accumulate_jacs(tensors: Sequence[Tensor], jacobians: Sequence[Tensor]) -> None:
    """Adds each Jacobian into the ``.jac`` of its tensor, creating the field when absent."""
    for tensor, jacobian in zip(tensors, jacobians, strict=True):
        existing = get_jac(tensor)
        if existing is None:
            set_jac(tensor, jacobian)
        else:
            with torch.no_grad():
                existing.add_(jacobian)


def accumulate_grads(tensors: Sequence[Tensor], gradients: Sequence[Tensor]) -> None:
    """Adds each gradient into the ``.grad`` of its tensor, like ``torch.autograd.backward``.

    The gradients must own their memory (see :func:`own`): a new ``.grad`` is the gradient itself.
    """
    for tensor, gradient in zip(tensors, gradients, strict=True):
        if tensor.grad is None:
            tensor.grad = gradient
        else:
            with torch.no_grad():
                tensor.grad.add_(gradient)


def own(tensor: Tensor, protected: set[int]) -> Tensor:
    """``tensor``, or a contiguous copy when it is not contiguous or its storage is protected.

    The storage of the returned tensor is added to ``protected``, so that two results never
    share memory (autograd may return the same tensor for two inputs, or a seed itself).
    """
    if tensor.numel() == 0:
        return tensor
    if not tensor.is_contiguous() or _storage_key(tensor) in protected:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    protected.add(_storage_key(tensor))
    return tensor


def storage_keys(tensors: Iterable[Tensor]) -> set[int]:
    """The storages of ``tensors`` (non-empty ones), to protect from aliasing."""
    return {_storage_key(tensor) for tensor in tensors if tensor.numel() > 0}


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


def _identity_seeds(
    outputs: Sequence[Tensor], start: int, stop: int
) -> tuple[list[Tensor], list[Tensor]]:
    """Rows ``start:stop`` of the identity seed, only for the outputs these rows touch."""
    chosen_outputs: list[Tensor] = []
    seeds: list[Tensor] = []
    offset = 0
    for output in outputs:
        size = output.numel()
        low, high = max(start, offset), min(stop, offset + size)
        if low < high:
            seed = torch.zeros(stop - start, size, dtype=output.dtype, device=output.device)
            rows = torch.arange(low - start, high - start, device=output.device)
            columns = torch.arange(low - offset, high - offset, device=output.device)
            seed[rows, columns] = 1
            chosen_outputs.append(output)
            seeds.append(seed.reshape(stop - start, *output.shape))
        offset += size
    return chosen_outputs, seeds


def _storage_key(tensor: Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def compute_jacobians(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    jac_outputs: Sequence[Tensor] | None,
    retain_graph: bool,
    parallel_chunk_size: int | None,
    shared_buffer: bool = False,
) -> list[Tensor]:
    """Rows of ``jac_outputs · J`` (or of ``J`` itself) for each input, shape ``[m, *input.shape]``.

    Rows are computed ``parallel_chunk_size`` at a time by one vectorised backward pass
    (``is_grads_batched=True``); a chunk of one row uses a plain backward pass, without vmap. The
    graph is kept until the last chunk. Results of several chunks are written into preallocated
    tensors, so the Jacobian is never held twice; no returned tensor aliases a seed or another
    result. With one chunk the results are autograd's own tensors (made contiguous). With several
    chunks, they are one contiguous tensor per input, or, with ``shared_buffer`` (and inputs of
    one dtype and device), views of consecutive column blocks of one ``[m, N]`` matrix, which
    :func:`jac_to_grad` then aggregates without copying.
    """
    m = number_of_rows(outputs, jac_outputs)
    if m == 0:
        return [input.new_zeros((0, *input.shape)) for input in inputs]
    chunk = m if parallel_chunk_size is None else min(parallel_chunk_size, m)
    protected = storage_keys(jac_outputs or [])
    results: list[Tensor] = []
    for start in range(0, m, chunk):
        stop = min(start + chunk, m)
        if jac_outputs is None:
            chosen_outputs, seeds = _identity_seeds(outputs, start, stop)
        else:
            chosen_outputs = list(outputs)
            seeds = [jac_output[start:stop] for jac_output in jac_outputs]
        batched = stop - start > 1
        grads = torch.autograd.grad(
            chosen_outputs,
            list(inputs),
            grad_outputs=seeds if batched else [seed[0] for seed in seeds],
            retain_graph=retain_graph or stop < m,
            allow_unused=True,
            is_grads_batched=batched,
        )
        del seeds
        if start == 0 and stop == m:
            results = _own(grads, inputs, m, protected)
        else:
            if start == 0:
                results = _preallocate(inputs, m, shared_buffer)
            for result, grad in zip(results, grads, strict=True):
                if grad is None:
                    result[start:stop].zero_()
                else:
                    result[start:stop].copy_(grad.reshape(stop - start, *result.shape[1:]))
        del grads
    return results


def _preallocate(inputs: Sequence[Tensor], m: int, shared_buffer: bool) -> list[Tensor]:
    """Empty Jacobians ``[m, *input.shape]``: views of one ``[m, N]`` matrix if possible."""
    if not shared_buffer or len({(input.dtype, input.device) for input in inputs}) != 1:
        return [input.new_empty((m, *input.shape)) for input in inputs]
    sizes = [input.numel() for input in inputs]
    matrix = inputs[0].new_empty((m, sum(sizes)))
    blocks: list[Tensor] = []
    offset = 0
    for input, size in zip(inputs, sizes, strict=True):
        blocks.append(matrix[:, offset : offset + size].view(m, *input.shape))
        offset += size
    return blocks


def as_one_matrix(jacobians: Sequence[Tensor]) -> Tensor | None:
    """The ``[m, N]`` matrix of which ``jacobians`` are consecutive column blocks, if there is one.

    This is the layout produced by :func:`_preallocate` (and by ``jac_to_grad(retain_jac=True)``):
    the matrix is then a view, with no copy. Returns None for any other layout.
    """
    m = jacobians[0].shape[0]
    sizes = [jacobian[0].numel() if m > 0 else 0 for jacobian in jacobians]
    total = sum(sizes)
    if m == 0 or total == 0:
        return None
    first = jacobians[0]
    storage = _storage_key(first)
    offset = first.storage_offset()
    for jacobian, size in zip(jacobians, sizes, strict=True):
        if (
            _storage_key(jacobian) != storage
            or jacobian.storage_offset() != offset
            or (m > 1 and jacobian.stride(0) != total)
            or not jacobian[0].is_contiguous()
        ):
            return None
        offset += size
    return first.as_strided((m, total), (total, 1), first.storage_offset())


def _own(
    grads: Sequence[Tensor | None], inputs: Sequence[Tensor], m: int, protected: set[int]
) -> list[Tensor]:
    """Turns the gradients of the only chunk into ``[m, *input.shape]`` tensors owning memory."""
    owned: list[Tensor] = []
    for grad, input in zip(grads, inputs, strict=True):
        if grad is None:
            owned.append(input.new_zeros((m, *input.shape)))
        else:
            owned.append(own(grad.reshape(m, *input.shape), protected))
    return owned
