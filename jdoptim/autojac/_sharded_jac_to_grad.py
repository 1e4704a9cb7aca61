"""``sharded_jac_to_grad``: averages ``.jac`` across processes and aggregates it, sharded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..aggregation._bases import Aggregator
from ._all_reduce import check_initialized
from ._checks import as_distinct_tensors, check_aggregator
from ._jac_fields import accumulate_grads, delete_jac
from ._jac_to_grad import _checked_jacobians
from ._matrix import split_update, to_matrix
from ._sharded import GroupError, shardable, sharded_aggregate


def sharded_jac_to_grad(
    tensors: Tensor | Iterable[Tensor],
    /,
    aggregator: Aggregator,
    *,
    process_group: Any = None,
    retain_jac: bool = False,
    losses: Tensor | None = None,
) -> Tensor | None:
    r"""``all_reduce_jac`` then ``jac_to_grad``, with the aggregation divided across the ranks.

    Every rank holds the ``.jac`` of its own data (``[m, *t.shape]`` per tensor, ``m`` the same
    on every rank). The average :math:`J` of the ranks' ``[m, N]`` Jacobians is aggregated as
    :func:`all_reduce_jac` followed by :func:`jac_to_grad` would, but without ever gathering
    :math:`J` on one rank:

    1. a reduce-scatter by columns gives rank ``r`` the averaged columns :math:`J_r` of its
       ``1/R`` of the ``N`` parameters;
    2. one all-reduce sums the ``[m, m]`` Gramians :math:`J_r J_r^\top` into
       :math:`G = J J^\top` (and averages ``losses``);
    3. every rank computes the same weights :math:`w = W(G)` and its part
       :math:`J_r^\top w` of the update;
    4. an all-gather assembles the update, which is added to ``.grad`` on every rank.

    Each rank sends about ``m·N + N`` numbers instead of the ``2·m·N`` of an all-reduce of the
    Jacobian, and computes ``1/R`` of :math:`J J^\top` and :math:`J^\top w`. The result equals
    the all-reduce path up to the rounding of the sums, and is the same on every rank.

    It applies to the aggregators of the form :math:`J^\top W(J J^\top)`
    (:class:`~jdoptim.aggregation.GramianWeightedAggregator`: UPGrad, MGDA, Mean, …) and to
    those whose columns are independent (:class:`~jdoptim.aggregation.GradDrop`,
    :class:`~jdoptim.aggregation.TrimmedMean`); the others need the whole Jacobian on one rank
    (use :func:`all_reduce_jac` and :func:`jac_to_grad`). An aggregator drawing random numbers
    must draw the same ones on every rank: seed torch identically on every rank first
    (:class:`~jdoptim.JacobianOptimizer` with a ``process_group`` does that for you).

    Args:
        tensors: the tensors whose ``.jac`` is aggregated, the same on every rank, in the same
            order.
        aggregator: the aggregator, one for which sharding is exact (see above).
        process_group: the :mod:`torch.distributed` process group; ``None`` is the default
            group.
        retain_jac: keep the (local, unreduced) ``.jac`` fields instead of deleting them.
        losses: the local ``[m]`` loss values, averaged across ranks, for aggregators that read
            them.

    Returns:
        The weights ``[m]`` of a Gramian-weighted aggregator, else ``None``.

    Example:
        >>> import torch
        >>> import torch.distributed as dist
        >>> from jdoptim.aggregation import UPGrad
        >>> from jdoptim.autojac import backward, sharded_jac_to_grad
        >>> dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29583", rank=0,
        ...                         world_size=1)
        >>> param = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> backward(torch.stack([param[0], 2 * param[1]]))  # J = [[1, 0], [0, 2]]
        >>> weights = sharded_jac_to_grad([param], UPGrad())
        >>> param.grad.round(decimals=4), weights.round(decimals=4)
        (tensor([0.5000, 1.0000]), tensor([0.5000, 0.5000]))
        >>> dist.destroy_process_group()
    """
    tensor_list = as_distinct_tensors(tensors, "tensors")
    check_aggregator(aggregator)
    if not shardable(aggregator):
        raise ValueError(
            "`aggregator` must be a GramianWeightedAggregator or aggregate each column on its "
            f"own (GradDrop, TrimmedMean), but got {aggregator!r}: use all_reduce_jac and "
            "jac_to_grad."
        )
    check_initialized()
    jacobians = _checked_jacobians(tensor_list)
    m = jacobians[0].shape[0]
    _, matrix = to_matrix(list(jacobians), m)
    del jacobians
    with torch.no_grad():
        try:
            update, results = sharded_aggregate(
                matrix, [matrix.shape[1]], [aggregator], process_group, losses=losses
            )
        except GroupError as error:
            raise error.error from error
    gradients = [
        part.to(dtype=tensor.dtype, copy=True)
        for part, tensor in zip(split_update(update, tensor_list), tensor_list, strict=True)
    ]
    accumulate_grads(tensor_list, gradients)
    if not retain_jac:
        for tensor in tensor_list:
            delete_jac(tensor)
    result = results[0]
    return None if result is None else result.weights
