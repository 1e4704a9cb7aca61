r"""Gramian of token-wise calls that share a parameter (weight tying), from closed forms.

A parameter used by several calls (an embedding table that is also the weight of the output
head, a linear layer called twice) has, for each row ``r`` of the losses, the gradient
``g[r] = Σ_i g_i[r]`` summed over its uses ``i``. Its Gramian is

.. math:: G = \sum_i G_i + \sum_{i < j} (C_{ij} + C_{ij}^⊤), \quad
    C_{ij}[r, r'] = \langle g_i[r], g_j[r'] \rangle,

where each ``G_i`` is the closed form of the call alone and the cross terms come from the same
per-call pieces (inputs and output gradients), so that no call is replayed:

- embedding ``i`` and linear ``j`` (``head.weight is embedding.weight``): ``g_i[r]`` only
  touches the table rows ``U`` of the tokens of the call, so only those rows of ``g_j[r']``
  (``Σ_s δ_j[r', s, U]ᵀ x_j[r', s]``) are formed: ``[T B, U, d]`` for both;
- two embeddings: both restricted to the union of their tokens;
- two linear calls: ``Σ_{s, s'} ⟨δ_i[r, s], δ_j[r', s']⟩ ⟨x_i[r, s], x_j[r', s']⟩`` or the
  per-row gradients, whichever is cheaper; their biases from the gradients summed over
  positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._autocast import as_computed
from ._embedding import embedding_gramian, embedding_rows, is_plain_embedding, scatter_rows
from ._linear import is_plain_linear, linear_gramian
from ._module_hooks import ModuleCall

NamedParameters = list[tuple[str, nn.Parameter]]

#: The embedding–head cross term is taken over pairs of positions when that costs at most this
#: many times the multiply-adds of the per-row gradients, whose blocks of table rows run several
#: small operations each. Measured on a 2-core CPU (rows × positions, vocabulary, width 64; the
#: cost ratio in brackets): pairs 0.34 against 1.01 ms at 16 × 16, 300 [0.77]; 0.53 against
#: 1.09 ms at 16 × 16, 100 [1.41]; 0.89 against 0.97 ms at 8 × 64, 1000 [1.13]; but 4.14
#: against 3.75 ms at 32 × 32, 500 [1.16], 1.27 against 1.61 ms at 32 × 16, 100 [1.72], and
#: 1.19 against 0.87 ms at 16 × 32, 100 [3.45].
_KERNEL_PREFERENCE = 1.5


@dataclass
class _Use:
    """One call of the group: its module, recorded input, output gradients and parameters."""

    module: nn.Module
    x: Tensor
    delta: Tensor
    names: dict[int, str]

    @property
    def is_embedding(self) -> bool:
        return isinstance(self.module, nn.Embedding)


def tied_gramian(
    calls: list[ModuleCall],
    deltas: dict[ModuleCall, list[Tensor | None]],
    used: dict[ModuleCall, NamedParameters],
    batched: bool,
) -> Tensor | None:
    """The ``[R, R]`` Gramian of a group of linear and embedding calls, or None for others.

    None when a call of the group is not a plain ``nn.Linear`` or ``nn.Embedding`` called on one
    tensor with one differentiable output: the group is replayed then.
    """
    uses: list[_Use] = []
    for call in calls:
        if all(delta is None for delta in deltas[call]):
            continue  # No gradient reached this call's outputs: no contribution.
        use = _use(call, deltas[call], used[call])
        if use is None:
            return None
        uses.append(use)
    if not uses:
        return None
    gramian: Tensor | None = None
    for use in uses:
        names = set(use.names.values())
        if use.is_embedding:
            assert isinstance(use.module, nn.Embedding)
            own = embedding_gramian(use.module, use.x, use.delta, batched)
        else:
            own = linear_gramian(use.module, use.x, use.delta, names, batched)
        gramian = own if gramian is None else gramian + own.to(gramian.dtype)
    assert gramian is not None
    for i, first in enumerate(uses):
        for second in uses[i + 1 :]:
            for key, first_name in first.names.items():
                second_name = second.names.get(key)
                if second_name is None:
                    continue
                cross = _cross(first, first_name, second, second_name, batched)
                gramian += (cross + cross.T).to(gramian.dtype)
    return gramian


def _use(call: ModuleCall, deltas: list[Tensor | None], named: NamedParameters) -> _Use | None:
    module = call.module
    names = {id(parameter): name for name, parameter in named}
    if is_plain_embedding(module):
        allowed = {"weight"}
    elif is_plain_linear(module):
        allowed = {"weight", "bias"}
    else:
        return None
    if (
        call.broadcast_shape is not None
        or len(call.args) != 1
        or not isinstance(call.args[0], Tensor)
        or call.kwargs
        or len(deltas) != 1
        or not set(names.values()) <= allowed
    ):
        return None
    delta = deltas[0]
    if delta is None:
        return None
    return _Use(module, call.args[0], delta, names)


def _cross(first: _Use, first_name: str, second: _Use, second_name: str, batched: bool) -> Tensor:
    """``C[r, r'] = ⟨g_first[r], g_second[r']⟩`` for the shared parameter (``[R, R]``)."""
    if first_name == "bias":  # two linear layers sharing their bias
        return _bias_rows(first, batched) @ _bias_rows(second, batched).T
    if first.is_embedding or second.is_embedding:
        return _cross_with_embedding(first, second, batched)
    return _cross_linear(first, second, batched)


def _bias_rows(use: _Use, batched: bool) -> Tensor:
    _, delta = as_computed(use.x, use.delta)
    rows, samples = delta.shape[0], (use.x.shape[0] if batched else 1)
    return delta.reshape(rows * samples, -1, delta.shape[-1]).sum(dim=1)


def _linear_rows(use: _Use, batched: bool) -> tuple[Tensor, Tensor]:
    """``x`` ``[R, S, in]`` (each row reads its sample's input) and ``δ`` ``[R, S, out]``."""
    x, delta = as_computed(use.x, use.delta)
    rows, samples = delta.shape[0], (x.shape[0] if batched else 1)
    x = x.reshape(samples, -1, x.shape[-1])
    delta = delta.reshape(rows * samples, x.shape[1], -1)
    return x.repeat(rows, 1, 1), delta


def _cross_linear(first: _Use, second: _Use, batched: bool) -> Tensor:
    x1, d1 = _linear_rows(first, batched)
    x2, d2 = _linear_rows(second, batched)
    size, s1, s2 = x1.shape[0], x1.shape[1], x2.shape[1]
    out_features, in_features = d1.shape[-1], x1.shape[-1]
    kernel_cost = size * size * s1 * s2 * (in_features + out_features)
    if kernel_cost <= size * in_features * out_features * (s1 + s2 + size):
        x_kernel = torch.einsum("rsi,qpi->rsqp", x1, x2)
        d_kernel = torch.einsum("rso,qpo->rsqp", d1, d2)
        return (x_kernel * d_kernel).sum(dim=(1, 3))
    j1 = torch.einsum("rso,rsi->roi", d1, x1).reshape(size, -1)
    j2 = torch.einsum("rso,rsi->roi", d2, x2).reshape(size, -1)
    return j1 @ j2.T


def _cross_with_embedding(first: _Use, second: _Use, batched: bool) -> Tensor:
    """Cross term with an embedding use, on the table rows its tokens touch."""
    embedding, other, swapped = (
        (first, second, False) if first.is_embedding else (second, first, True)
    )
    assert isinstance(embedding.module, nn.Embedding)
    flat, ids = embedding_rows(embedding.module, embedding.x, embedding.delta, batched)
    size, dim = flat.shape[0], flat.shape[2]
    if other.is_embedding:
        assert isinstance(other.module, nn.Embedding)
        other_flat, other_ids = embedding_rows(other.module, other.x, other.delta, batched)
        table_rows = torch.unique(torch.cat([ids.reshape(-1), other_ids.reshape(-1)]))
        budget = max(flat.numel(), other_flat.numel())
        dtype = flat.dtype
    else:
        table_rows = torch.unique(ids)
        x, delta = _linear_rows(other, batched)
        budget = max(flat.numel(), delta.numel(), x.numel())
        dtype = torch.promote_types(flat.dtype, delta.dtype)
        positions, others = flat.shape[1], x.shape[1]
        kernel_cost = size * positions * size * others * dim
        per_row_cost = size * table_rows.numel() * dim * (others + size)
        if kernel_cost <= _KERNEL_PREFERENCE * per_row_cost:
            cross = _cross_with_head_by_pairs(flat, ids, x, delta, dtype, budget)
            return cross.T if swapped else cross
    cross = flat.new_zeros(size, size, dtype=dtype)
    # By blocks of table rows, so that the per-row gradients take no more memory than the
    # calls' own tensors.
    block = max(1, budget // (size * dim))
    for start in range(0, table_rows.numel(), block):
        part = table_rows[start : start + block]
        if other.is_embedding:
            other_rows = scatter_rows(other_flat, other_ids, part)
        else:
            # Only the rows of the head's weight (its outputs) that the tokens touch.
            other_rows = torch.einsum("rsu,rsi->rui", delta.index_select(-1, part), x)
        rows = scatter_rows(flat.to(dtype), ids, part).reshape(size, -1)
        cross += rows @ other_rows.to(dtype).reshape(size, -1).T
    return cross.T if swapped else cross


def _cross_with_head_by_pairs(
    flat: Tensor, ids: Tensor, x: Tensor, delta: Tensor, dtype: torch.dtype, budget: int
) -> Tensor:
    r"""The embedding–head cross term over pairs of positions, without per-row gradients:

    .. math:: C[r, r'] = \sum_{s, s'} δ_{head}[r', s', \mathrm{ids}[r, s]]
        \langle \mathrm{flat}[r, s], x[r', s'] \rangle

    (the embedding's gradient of row ``r`` puts ``flat[r, s]`` on table row ``ids[r, s]``, the
    head's of row ``r'`` puts ``δ[r', s', u] x[r', s']`` on every row ``u``). By blocks of rows
    ``r``, so that the ``[rows · S, R · S']`` products take at most ``budget`` entries: a few
    large operations where the per-row gradients take several small ones per block of table
    rows.
    """
    size, positions, dim = flat.shape
    others = x.shape[1]
    inputs = x.reshape(size * others, dim).to(dtype)
    gradients = delta.reshape(size * others, -1).to(dtype)
    cross = flat.new_zeros(size, size, dtype=dtype)
    block = max(1, budget // (positions * size * others))
    for start in range(0, size, block):
        stop = min(size, start + block)
        products = flat[start:stop].reshape(-1, dim).to(dtype) @ inputs.T
        picked = gradients.index_select(1, ids[start:stop].reshape(-1))
        products.mul_(picked.T)
        pairs = products.reshape(stop - start, positions, size, others)
        cross[start:stop] = pairs.sum(dim=(1, 3))
    return cross
