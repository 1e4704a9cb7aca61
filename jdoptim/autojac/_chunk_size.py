"""How many rows of the Jacobian go into one vectorised backward pass, chosen from the graph.

The default ``parallel_chunk_size="auto"`` looks at the autograd graph once per call: graphs that
``torch.vmap`` cannot run (regions compiled by ``torch.compile``, fused cuDNN RNN kernels) and
convolutions on the CPU, whose vectorised backward is many times slower than a loop of plain
backward passes, get one row per pass; every other graph gets all rows in one vectorised pass.

Regions compiled by ``torch.compile`` (AOTAutograd, e.g. the default inductor backend) also need
care when their backward runs more than once on one graph: by default torch compiles their
backward with *donated buffers* (the backward may overwrite the activations it saved), which it
refuses to run with ``retain_graph=True``. When the compiled backward has not been built yet,
the first backward pass kept for more passes makes torch build it without donated buffers, so
it can run again; only torch's stale check must be switched off around the passes. When it was
already built with donated buffers (by an earlier single backward pass), a second pass would
read overwritten activations: that is refused with an error saying what to do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

ChunkSize = int | Literal["auto"] | None
"""The type of ``parallel_chunk_size``: rows per vectorised pass, ``"auto"``, or ``None`` (all)."""

_COMPILED = "CompiledFunctionBackward"
_UNVECTORISABLE = frozenset({_COMPILED, "CudnnRnnBackward0", "MiopenRnnBackward0"})
_CONVOLUTIONS = frozenset(
    {
        "ConvolutionBackward0",
        "ConvolutionBackward1",
        "MkldnnConvolutionBackward0",
        "SlowConv2DBackward0",
        "SlowConvDilated2DBackward0",
        "SlowConv3DBackward0",
        "ConvDepthwise2DBackward0",
    }
)


class GraphSurvey(NamedTuple):
    """What matters, in the graph of some outputs, to the way its Jacobian is computed."""

    compiled: list[Any]
    """The ``torch.autograd.Function`` classes of the regions compiled by ``torch.compile``."""
    unvectorisable: bool
    """Whether some node cannot run under ``torch.vmap`` (compiled region, fused RNN kernel)."""
    convolution: bool
    """Whether some node is the backward of a convolution."""


def survey_graph(roots: Sequence[Tensor]) -> GraphSurvey:
    """Walks every node of the graph of ``roots`` once, recording what :class:`GraphSurvey` says."""
    compiled: list[Any] = []
    names: set[str] = set()
    seen: set[Any] = set()
    stack = [root.grad_fn for root in roots if root.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        names.add(name)
        if name == _COMPILED:
            function = getattr(node, "_forward_cls", None)
            if function is not None and function not in compiled:
                compiled.append(function)
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return GraphSurvey(
        compiled, not names.isdisjoint(_UNVECTORISABLE), not names.isdisjoint(_CONVOLUTIONS)
    )


def choose_chunk_size(
    parallel_chunk_size: ChunkSize, survey: GraphSurvey, m: int, device: torch.device
) -> int:
    """The number of rows per backward pass (between 1 and ``m``) for ``parallel_chunk_size``.

    ``"auto"`` gives 1 for graphs vmap cannot run and for convolutions on the CPU, else ``m``.
    An explicit vectorised chunk on a graph vmap cannot run raises ``ValueError``.
    """
    if parallel_chunk_size == "auto":
        if survey.unvectorisable or (survey.convolution and device.type == "cpu"):
            return 1
        return m
    chunk = m if parallel_chunk_size is None else min(parallel_chunk_size, m)
    if chunk > 1 and survey.unvectorisable:
        what = (
            "a region compiled by torch.compile"
            if survey.compiled
            else "a fused RNN kernel (cuDNN or MIOpen)"
        )
        raise ValueError(
            f"`parallel_chunk_size` must be 1 or 'auto' when the graph contains {what}, which "
            "torch.vmap cannot run backward through, but got "
            f"{parallel_chunk_size!r} for {m} rows. Pass parallel_chunk_size='auto' (the "
            "default) or 1 to compute the rows one plain backward pass at a time."
        )
    return chunk


@contextmanager
def compiled_regions(compiled: Sequence[Any], several_passes: bool) -> Iterator[None]:
    """Runs backward passes through the compiled regions ``compiled`` safely.

    With ``several_passes`` (a backward pass that keeps the graph for another one), refuses
    regions whose backward was already built with donated buffers, and switches off torch's
    check of donated buffers, which is stale for a backward built while the graph was kept.
    """
    if not compiled or not several_passes:
        yield
        return
    for function in compiled:
        built = getattr(function, "compiled_bw", None) is not None
        metadata = getattr(function, "metadata", None)
        if built and getattr(metadata, "bw_donated_idxs", None):
            raise RuntimeError(
                "The Jacobian needs one backward pass per row (or a graph kept with "
                "`retain_graph=True`), but a region of the model compiled by torch.compile had "
                "its backward built for a single pass (torch's donated buffers, which let it "
                "overwrite the saved activations) by an earlier plain backward pass, so running "
                "it again would give wrong rows. Set `torch._functorch.config.donated_buffer = "
                "False` before the first backward pass through the compiled model, or make the "
                "first backward pass through it a Jacobian (not a single `loss.backward()`)."
            )
    import torch._functorch.config as config

    switch: Any = nullcontext()
    if getattr(config, "donated_buffer", False):
        switch = config.patch(donated_buffer=False)
    with switch:
        yield
