"""Checks that the modules of an engine keep the samples of a batch independent."""

from __future__ import annotations

from torch import nn
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
        label = f"`{name}` ({type(module).__name__})" if name else type(module).__name__
        if isinstance(module, _BatchNorm) and (module.training or module.running_mean is None):
            reason = "normalises with statistics of the whole batch"
        elif module.training and any(
            getattr(module, buffer, None) is not None for buffer in ("running_mean", "running_var")
        ):
            reason = "updates running statistics in training mode"
        elif isinstance(module, nn.RNNBase):
            reason = "keeps a hidden state that is not batched on the first dimension"
        else:
            continue
        raise ValueError(
            f"The module {label} {reason}, so the losses of a batch are not independent along "
            f"`batch_dim={batch_dim}`. Use `batch_dim=None` (exact for every module, slower), "
            "put the module in eval mode, or replace batch normalization by `nn.GroupNorm`."
        )
