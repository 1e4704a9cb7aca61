"""Which calls are batched along the batch dimension, and which serve every sample at once.

A call of a position embedding on ``torch.arange(T)``, of a learned constant or of a shared
table returns a tensor without a batch dimension, broadcast later into the batch: every sample
uses all of it. Its per-sample gradients exist, but the single backward pass that serves the
batched calls only gives their sum over the samples. Such *shared* calls are computed exactly,
one row per loss, like calls without a batch dimension.

Shapes alone cannot tell a shared output ``[T, d]`` from a batched one when ``T`` equals the
batch size, so the decision is made from gradients: for an output batched on its first
dimension, the gradient of the losses weighted by ``w_b`` (one weight per sample) is, on the
slice ``b``, ``w_b`` times the gradient of the unweighted losses; for an output that several
samples use, it is not (unless the weights happen to be equal). The verdict is kept per module
and signature of shapes, so that the two backward passes are paid once per kind of call.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge

from ._module_hooks import ModuleCall

EdgeKey = tuple[object, int]
Signature = tuple[int, tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...], int, int]


def signature(call: ModuleCall, samples: int, batch_dim: int) -> Signature:
    """What the verdict on ``call`` depends on: its module, its shapes and the batch."""
    inputs = tuple(tuple(t.shape) for t in call.input_tensors)
    outputs = tuple(tuple(shape) for shape in call.output_shapes)
    return (id(call.module), inputs, outputs, samples, batch_dim)


def has_batch_shapes(call: ModuleCall, samples: int) -> bool:
    """Whether every input and differentiable output of ``call`` has ``samples`` rows first."""
    shapes = [t.shape for t in call.input_tensors]
    shapes += [
        s for s, e in zip(call.output_shapes, call.output_edges, strict=True) if e is not None
    ]
    return all(len(shape) > 0 and shape[0] == samples for shape in shapes)


def find_shared_calls(
    output: Tensor,
    batch_dim: int,
    samples: int,
    calls: list[ModuleCall],
    verdicts: dict[Signature, bool],
) -> set[ModuleCall]:
    """The calls of ``calls`` whose tensors are not batched on their first dimension.

    ``verdicts`` caches, per :func:`signature`, whether the call is shared; calls whose shapes
    already show it need no backward pass, the others without a verdict are tested with two
    backward passes (the losses unweighted, then weighted by sample).
    """
    shared: set[ModuleCall] = set()
    pending: list[ModuleCall] = []
    for call in calls:
        key = signature(call, samples, batch_dim)
        if not has_batch_shapes(call, samples):
            shared.add(call)
        elif key in verdicts:
            if verdicts[key]:
                shared.add(call)
        elif samples > 1:
            pending.append(call)
        else:
            verdicts[key] = False
    if not pending:
        return shared
    edges: dict[tuple[object, int], GradientEdge] = {}
    for call in pending:
        for edge in call.output_edges:
            if edge is not None:
                edges.setdefault((edge.node, edge.output_nr), edge)
    batched = batched_edges(output, batch_dim, samples, edges)
    for call in pending:
        is_shared = any(
            not batched[(edge.node, edge.output_nr)]
            for edge in call.output_edges
            if edge is not None
        )
        verdicts[signature(call, samples, batch_dim)] = is_shared
        if is_shared:
            shared.add(call)
    return shared


def batched_edges(
    output: Tensor, batch_dim: int, samples: int, edges: dict[EdgeKey, GradientEdge]
) -> dict[EdgeKey, bool]:
    """Whether the gradient at each of ``edges`` is batched on its first dimension.

    Two backward passes: the losses unweighted, then weighted by sample.
    """
    weights = _sample_weights(samples, output)
    shape = [1] * output.dim()
    shape[batch_dim] = samples
    plain = torch.autograd.grad(
        output, list(edges.values()), torch.ones_like(output), retain_graph=True, allow_unused=True
    )
    weighted = torch.autograd.grad(
        output,
        list(edges.values()),
        weights.reshape(shape).expand_as(output).contiguous(),
        retain_graph=True,
        allow_unused=True,
    )
    return {
        key: _is_batched(g, gw, weights) for key, g, gw in zip(edges, plain, weighted, strict=True)
    }


def _sample_weights(samples: int, output: Tensor) -> Tensor:
    """Distinct weights in ``[1, 2)``, one per sample, the same at every call."""
    generator = torch.Generator().manual_seed(20240531)
    weights = 1.0 + torch.rand(samples, generator=generator, dtype=torch.float64)
    return weights.to(device=output.device, dtype=output.dtype)


def _is_batched(plain: Tensor | None, weighted: Tensor | None, weights: Tensor) -> bool:
    """Whether slice ``b`` of ``weighted`` is ``weights[b]`` times slice ``b`` of ``plain``."""
    if plain is None or weighted is None:
        return True  # No gradient reaches the output: it contributes nothing either way.
    if plain.dim() == 0 or plain.shape[0] != weights.shape[0]:
        return False
    eps = torch.finfo(plain.dtype).eps
    dtype = torch.promote_types(plain.dtype, torch.float32)
    plain, weighted = plain.to(dtype), weighted.to(dtype)
    scaled = plain * weights.to(dtype).reshape(-1, *([1] * (plain.dim() - 1)))
    difference = (weighted - scaled).abs()
    finite = torch.isfinite(difference)
    if not bool(finite.any()):
        return True
    # Rounding differs between the two passes: a relative gap under √eps is rounding.
    scale = torch.where(finite, scaled.abs(), torch.zeros_like(scaled)).amax()
    tolerance = eps**0.5 * float(scale)
    return bool((difference[finite] <= tolerance).all())
