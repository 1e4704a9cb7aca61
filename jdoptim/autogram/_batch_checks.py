"""Checks that the modules of an engine keep the samples of a batch independent."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge
from torch.nn.modules.batchnorm import _BatchNorm


def check_batch_independence(named_modules: list[tuple[str, nn.Module]], batch_dim: int) -> None:
    """Raises if a module mixes the samples of a batch or is not batched on dimension 0.

    Raises:
        ValueError: for batch normalization that uses batch statistics (training mode, or
            ``track_running_stats=False``), for any module updating running statistics in
            training mode, and for recurrent modules (their hidden state is batched on
            dimension 1).
    """
    for name, module in named_modules:
        if isinstance(module, _BatchNorm) and (module.training or module.running_mean is None):
            reason = "normalises with statistics of the whole batch"
        elif module.training and (
            _attribute(module, "running_mean") is not None
            or _attribute(module, "running_var") is not None
        ):
            reason = "updates running statistics in training mode"
        elif isinstance(module, nn.RNNBase):
            reason = "keeps a hidden state that is not batched on the first dimension"
        else:
            continue
        label = f"`{name}` ({type(module).__name__})" if name else type(module).__name__
        raise ValueError(
            f"The module {label} {reason}, so the losses of a batch are not independent along "
            f"`batch_dim={batch_dim}`. Use `batch_dim=None` (exact for every module, slower), "
            "put the module in eval mode, or replace batch normalization by `nn.GroupNorm`."
        )


def _attribute(module: nn.Module, name: str) -> object:
    """``getattr(module, name, None)`` without the exception that ``nn.Module.__getattr__``
    raises for a missing name: the same lookup when ``type(module)`` does not define ``name``
    (the instance's own attributes, then its parameters, buffers and submodules)."""
    if hasattr(type(module), name):
        return getattr(module, name, None)
    for namespace in (vars(module), module._parameters, module._buffers, module._modules):
        if name in namespace:
            return namespace[name]
    return None


def check_losses_are_per_sample(
    output: Tensor, batch_dim: int, edges: list[GradientEdge], samples: int
) -> None:
    """Raises if the loss at index 0 along ``batch_dim`` depends on another sample.

    Shapes cannot tell a batch of per-sample losses from a vector of task losses whose number
    happens to equal the batch size (each a mean over the batch): both have ``samples`` entries
    along ``batch_dim``. The gradient of the losses at index 0 tells them apart: with
    per-sample losses, it vanishes on every other sample of the outputs ``edges`` (those of the
    last layer called, batched on their first dimension, so that this backward pass only goes
    through the computation of the losses from them).

    Raises:
        ValueError: when that gradient is finite and non-zero on another sample. A non-finite
            one (e.g. a GradScaler overflow) is left to give a non-finite Gramian.
    """
    if samples < 2 or not edges:
        return
    selector = torch.zeros_like(output).movedim(batch_dim, 0)
    selector[0] = 1.0
    gradients = torch.autograd.grad(
        output, edges, selector.movedim(0, batch_dim), retain_graph=True, allow_unused=True
    )
    for gradient in gradients:
        if gradient is None or gradient.dim() == 0 or gradient.shape[0] != samples:
            continue
        others = gradient[1:]
        if others.numel() == 0:
            continue
        # One reduction in the common case: the largest magnitude is 0 (per-sample losses) or
        # finite and non-zero (refused); only an infinite or NaN one needs the element-wise test.
        largest = float(others.abs().amax())
        if largest == 0.0:
            continue
        if math.isfinite(largest) or bool(((others != 0) & torch.isfinite(others)).any()):
            raise ValueError(
                f"With `batch_dim={batch_dim}`, the loss at index i along dimension {batch_dim} "
                "must depend on sample i of the batch only, but the loss at index 0 depends on "
                f"other samples of the batch of {samples}. These losses are not per-sample "
                "losses (e.g. task losses, each averaged over the batch, whose number equals "
                "the batch size): use `batch_dim=None` for them."
            )
