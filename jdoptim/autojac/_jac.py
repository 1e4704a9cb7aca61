"""``jac``: the Jacobian of some outputs with respect to some inputs, returned."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ._checks import (
    as_tensors,
    check_multipliers,
    check_outputs,
    check_parallel_chunk_size,
    check_require_grad,
)
from ._chunk_size import ChunkSize
from ._jacobian import compute_jacobians


def jac(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    *,
    jac_outputs: Tensor | Sequence[Tensor] | None = None,
    retain_graph: bool = False,
    parallel_chunk_size: ChunkSize = "auto",
) -> tuple[Tensor, ...]:
    r"""Computes and returns the Jacobian of ``outputs`` with respect to each of ``inputs``.

    The Jacobian analogue of :func:`torch.autograd.grad`. Every element of every tensor of
    ``outputs`` is one scalar objective; with :math:`m` objectives in total (flattened in order,
    each tensor in row-major order), the Jacobian with respect to an input :math:`x` has shape
    ``[m, *x.shape]``: row :math:`i` is :math:`\partial y_i / \partial x`. No ``.grad`` or
    ``.jac`` field is touched.

    With ``jac_outputs`` (the analogue of ``grad_outputs``), the result is the product
    :math:`V J` where :math:`V` stacks the ``m'`` rows given for every output: row :math:`i` of
    the result is :math:`\sum_k \langle V^{(k)}_i, \partial y^{(k)} / \partial x\rangle`. This
    chains Jacobians across several steps of the chain rule.

    Inputs that the outputs do not depend on get an all-zero Jacobian. Inputs may be any tensors
    requiring grad (leaves or intermediate results).

    .. warning::
        Limitation: torch's autograd calls the hook of every non-leaf tensor on which
        ``retain_grad()`` was called, for every backward pass that goes through it. With
        ``parallel_chunk_size=1`` such a tensor's ``.grad`` receives the sum of the rows'
        gradients (as with :func:`torch.autograd.grad`); with vectorised chunks it is left
        invalid (a leaked batched tensor). Read such ``.grad`` fields before calling this.

    Args:
        outputs: the tensor or sequence of tensors to differentiate, of any shapes.
        inputs: the tensor or sequence of tensors to differentiate with respect to.
        jac_outputs: one tensor per output, of shape ``[m', *output.shape]`` with the same
            ``m'`` for every output; ``None`` means the identity (the plain Jacobian).
        retain_graph: if ``False``, the graph is freed once the last row is computed (the graph
            is always kept between rows).
        parallel_chunk_size: how many rows are computed by one vectorised (``torch.vmap``)
            backward pass; ``None`` computes all rows at once. ``1`` computes one row per
            ordinary backward pass and never uses ``vmap`` (for models vmap cannot handle).
            ``"auto"`` (the default) chooses from the graph: ``1`` when it contains a region
            compiled by :func:`torch.compile` or a fused cuDNN RNN kernel (vmap cannot run them)
            or, on the CPU, a convolution (whose vectorised backward is several times slower
            than a loop and takes ten times the memory), else ``None``. An int above 1 or
            ``None`` on a graph vmap cannot run raises ``ValueError``. See
            :doc:`/torch_compile`.

    Returns:
        One Jacobian per input, of shape ``[m, *input.shape]`` (``m'`` rows with
        ``jac_outputs``), in the order of ``inputs``.

    Example:
        >>> import torch
        >>> from jdoptim.autojac import jac
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> y = torch.stack([x.pow(2).sum(), x.prod()])
        >>> jac(y, x)
        (tensor([[2., 4.],
                [2., 1.]]),)
        >>> y = torch.stack([x.pow(2).sum(), x.prod()])
        >>> jac(y, x, jac_outputs=torch.tensor([[1.0, 1.0]]))  # the gradient of the sum
        (tensor([[4., 5.]]),)
    """
    output_list = as_tensors(outputs, "outputs")
    check_outputs(output_list, "outputs")
    input_list = as_tensors(inputs, "inputs")
    check_require_grad(input_list, "inputs")
    multipliers = check_multipliers(jac_outputs, output_list, "jac_outputs", leading_dim=True)
    check_parallel_chunk_size(parallel_chunk_size)
    jacobians = compute_jacobians(
        output_list, input_list, multipliers, retain_graph, parallel_chunk_size
    )
    return tuple(jacobians)
