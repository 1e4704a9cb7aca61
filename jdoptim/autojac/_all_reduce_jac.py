"""``all_reduce_jac``: averages the ``.jac`` fields of some tensors across processes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from ._all_reduce import all_reduce_buffer, check_initialized
from ._checks import as_distinct_tensors
from ._jac_fields import set_jac
from ._jac_to_grad import _checked_jacobians
from ._matrix import column_blocks, to_matrix


def all_reduce_jac(
    tensors: Tensor | Iterable[Tensor],
    /,
    *,
    process_group: Any = None,
    average: bool = True,
) -> None:
    r"""Averages (or sums) the ``.jac`` fields of ``tensors`` over the ranks of a process group.

    The Jacobians are copied into one flat ``[m, N]`` buffer, reduced with a single
    :func:`torch.distributed.all_reduce` (one collective per call, whatever the number of
    tensors), divided by the group's size when ``average`` is true, and written back to ``.jac``.
    With mean-reduced losses computed on equal shards of a batch, the average of the per-rank
    Jacobians is the Jacobian of the full-batch losses, so

    ``backward(losses)`` → ``all_reduce_jac(params)`` → ``jac_to_grad(params, aggregator)``

    performs on every rank the same step as one process holding the whole batch: this is what
    :class:`~jdoptim.JacobianOptimizer` does when given a ``process_group``. Every rank must call
    it with the same tensors, in the same order, with the same number of rows ``m``.

    Args:
        tensors: the tensor or iterable of tensors whose ``.jac`` is reduced; each must have a
            ``.jac`` of shape ``[m, *t.shape]`` with one ``m``.
        process_group: the :mod:`torch.distributed` process group; ``None`` is the default
            group.
        average: divide the sum by the number of ranks (``True``) or keep the sum (``False``).

    Example:
        >>> import torch
        >>> import torch.distributed as dist
        >>> from jdoptim.autojac import all_reduce_jac, backward
        >>> dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29581", rank=0,
        ...                         world_size=1)
        >>> param = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> backward(torch.stack([param.sum(), param.prod()]))
        >>> all_reduce_jac([param])
        >>> param.jac
        tensor([[1., 1.],
                [2., 1.]])
        >>> dist.destroy_process_group()
    """
    tensor_list = as_distinct_tensors(tensors, "tensors")
    if not isinstance(average, bool):
        raise TypeError(f"`average` must be a bool, but got {type(average).__name__}.")
    check_initialized()
    jacobians = _checked_jacobians(tensor_list)
    m = jacobians[0].shape[0]
    buffer, matrix = to_matrix(jacobians, m)
    all_reduce_buffer(buffer, process_group, average=average)
    for tensor, part in zip(
        tensor_list, column_blocks(matrix, [t.numel() for t in tensor_list]), strict=True
    ):
        set_jac(tensor, part.view(m, *tensor.shape))
