"""The Jacobian product: rows of ``V J`` computed in chunks of vectorised backward passes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ._chunk_size import ChunkSize, choose_chunk_size, compiled_regions, survey_graph


def number_of_rows(outputs: Sequence[Tensor], multipliers: Sequence[Tensor] | None) -> int:
    """The number m of rows of the Jacobian of ``outputs`` (pre-multiplied by ``multipliers``)."""
    if multipliers is not None:
        return multipliers[0].shape[0]
    return sum(output.numel() for output in outputs)


def compute_jacobians(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    jac_outputs: Sequence[Tensor] | None,
    retain_graph: bool,
    parallel_chunk_size: ChunkSize,
    shared_buffer: bool = False,
) -> list[Tensor]:
    """Rows of ``jac_outputs · J`` (or of ``J`` itself) for each input, shape ``[m, *input.shape]``.

    Rows are computed ``parallel_chunk_size`` at a time by one vectorised backward pass
    (``is_grads_batched=True``); a chunk of one row uses a plain backward pass, without vmap;
    ``"auto"`` chooses from the graph (:func:`choose_chunk_size`), which is walked once, also to
    find the regions compiled by ``torch.compile``. The graph is kept until the last chunk.
    Results of several chunks are written into preallocated tensors, so the Jacobian is never
    held twice; no returned tensor aliases a seed or another result. With one chunk the results
    are autograd's own tensors (made contiguous). With several chunks, they are one contiguous
    tensor per input, or, with ``shared_buffer`` (and inputs of one dtype and device), views of
    consecutive column blocks of one ``[m, N]`` matrix, which :func:`jac_to_grad` then
    aggregates without copying.
    """
    m = number_of_rows(outputs, jac_outputs)
    if m == 0:
        return [input.new_zeros((0, *input.shape)) for input in inputs]
    survey = survey_graph(outputs)
    chunk = choose_chunk_size(parallel_chunk_size, survey, m, outputs[0].device)
    with compiled_regions(survey.compiled, several_passes=retain_graph or chunk < m):
        return _compute_in_chunks(
            outputs, inputs, jac_outputs, retain_graph, m, chunk, shared_buffer
        )


def _compute_in_chunks(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    jac_outputs: Sequence[Tensor] | None,
    retain_graph: bool,
    m: int,
    chunk: int,
    shared_buffer: bool,
) -> list[Tensor]:
    """The loop of :func:`compute_jacobians` over chunks of ``chunk`` rows."""
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


def own(tensor: Tensor, protected: set[int]) -> Tensor:
    """``tensor``, or a contiguous copy when it is not contiguous or its storage is protected.

    The storage of the returned tensor is added to ``protected``, so that two results never
    share memory (autograd may return the same tensor for two inputs, or a seed itself).
    """
    if tensor.numel() == 0:
        return tensor
    if not tensor.is_contiguous() or storage_key(tensor) in protected:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    protected.add(storage_key(tensor))
    return tensor


def storage_keys(tensors: Iterable[Tensor]) -> set[int]:
    """The storages of ``tensors`` (non-empty ones), to protect from aliasing."""
    return {storage_key(tensor) for tensor in tensors if tensor.numel() > 0}


def storage_key(tensor: Tensor) -> int:
    """The address of the storage of ``tensor``: two tensors sharing memory have the same key."""
    return tensor.untyped_storage().data_ptr()
