"""``backward``: the Jacobian of some tensors, accumulated into the ``.jac`` of the inputs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor

from ._checks import (
    as_tensors,
    check_accumulable,
    check_multipliers,
    check_no_duplicates,
    check_outputs,
    check_parallel_chunk_size,
)
from ._chunk_size import ChunkSize
from ._graph import leaves_in_order_of_first_use
from ._jac_fields import accumulate_jacs, check_jac_rows, get_jac
from ._jacobian import compute_jacobians, number_of_rows


def backward(
    tensors: Tensor | Sequence[Tensor],
    /,
    *,
    jac_tensors: Tensor | Sequence[Tensor] | None = None,
    inputs: Tensor | Iterable[Tensor] | None = None,
    retain_graph: bool = False,
    parallel_chunk_size: ChunkSize = "auto",
) -> None:
    r"""Computes the Jacobian of ``tensors`` and accumulates it into the ``.jac`` of ``inputs``.

    The Jacobian analogue of :func:`torch.autograd.backward`. Every element of every tensor of
    ``tensors`` is one scalar objective; with :math:`m` objectives in total (flattened in order),
    each input :math:`x` receives the Jacobian :math:`\partial y / \partial x` of shape
    ``[m, *x.shape]`` in its ``.jac`` attribute: it is created when absent and added to when
    present, like ``.grad`` (``.grad`` itself is not touched). Use :func:`jac_to_grad` to turn the
    ``.jac`` fields into ``.grad``.

    ``jac_tensors`` pre-multiplies, like ``grad_tensors`` in :func:`torch.autograd.backward` but
    with ``m'`` rows: the inputs then receive :math:`V J` with ``m'`` rows.

    Inputs that ``tensors`` do not depend on receive an all-zero Jacobian.

    Memory: besides the graph, the peak is the Jacobian itself plus, when computed in chunks of
    ``c < m`` rows, one chunk (a fraction ``c / m`` of it); the identity seed is built one chunk
    at a time. With chunks, the new ``.jac`` fields are views of consecutive column blocks of one
    ``[m, N]`` matrix, which :func:`jac_to_grad` aggregates without copying.

    .. note::
        ``.jac`` is a plain Python attribute set on the tensor (``param.jac``); delete it with
        ``del param.jac``. Non-leaf tensors on which ``retain_grad()`` was called receive a
        ``.jac`` only when passed in ``inputs``.

    .. warning::
        Limitation: torch's autograd calls the hook of every non-leaf tensor on which
        ``retain_grad()`` was called, for every backward pass that goes through it. With
        ``parallel_chunk_size=1`` such a tensor's ``.grad`` receives the sum of the rows'
        gradients (as with :func:`torch.autograd.grad`); with vectorised chunks it is left
        invalid (a leaked batched tensor). Read such ``.grad`` fields before calling this.

    Args:
        tensors: the tensor or sequence of tensors whose Jacobian is computed, of any shapes.
        jac_tensors: one tensor per element of ``tensors``, of shape ``[m', *tensor.shape]``
            with the same ``m'`` for all; ``None`` means the identity (the plain Jacobian).
        inputs: the tensors that receive a ``.jac``; each must require grad and be a leaf (or
            retain grad). Defaults to every leaf tensor requiring grad used to compute
            ``tensors``, in the order of first use during the forward pass.
        retain_graph: if ``False``, the graph is freed once the last row is computed.
        parallel_chunk_size: how many rows are computed by one vectorised (``torch.vmap``)
            backward pass; ``None`` computes all rows at once. ``1`` computes one row per
            ordinary backward pass and never uses ``vmap`` (for models vmap cannot handle).
            ``"auto"`` (the default) chooses from the graph: ``1`` when it contains a region
            compiled by :func:`torch.compile` or a fused cuDNN RNN kernel (vmap cannot run them)
            or, on the CPU, a convolution (whose vectorised backward is several times slower
            than a loop and takes ten times the memory), else ``None``. An int above 1 or
            ``None`` on a graph vmap cannot run raises ``ValueError``. See
            :doc:`/torch_compile`.

    Example:
        >>> import torch
        >>> from jdoptim.autojac import backward
        >>> param = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> losses = torch.stack([param.pow(2).sum(), param.prod()])
        >>> backward(losses)
        >>> param.jac
        tensor([[2., 4.],
                [2., 1.]])
        >>> backward(torch.stack([param.sum(), param[0]]))  # accumulates, like .grad
        >>> param.jac
        tensor([[3., 5.],
                [3., 1.]])
    """
    outputs = as_tensors(tensors, "tensors")
    check_outputs(outputs, "tensors")
    multipliers = check_multipliers(jac_tensors, outputs, "jac_tensors", leading_dim=True)
    check_parallel_chunk_size(parallel_chunk_size)
    if inputs is None:
        input_list, _ = leaves_in_order_of_first_use(outputs)
    else:
        input_list = as_tensors(inputs, "inputs")
        if not input_list:
            raise ValueError(
                "`inputs` must contain at least one tensor, but got an empty sequence."
            )
        check_accumulable(input_list, "inputs")
        check_no_duplicates(input_list, "inputs")
    check_jac_rows(input_list, number_of_rows(outputs, multipliers), "inputs")
    fresh = all(get_jac(input) is None for input in input_list)
    jacobians = compute_jacobians(
        outputs, input_list, multipliers, retain_graph, parallel_chunk_size, shared_buffer=fresh
    )
    accumulate_jacs(input_list, jacobians)
