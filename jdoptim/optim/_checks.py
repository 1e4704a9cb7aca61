"""Checks of the optimizer's arguments: aggregators, parameter groups, process groups, losses."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .._describe import describe
from ..aggregation import Aggregator
from ..autojac._checks import as_tensors


def check_aggregator(aggregator: Any, name: str) -> None:
    """Checks that ``aggregator`` is an :class:`Aggregator` instance (``name`` is quoted)."""
    if not isinstance(aggregator, Aggregator):
        raise TypeError(
            f"{name if name.startswith('`') else f'`{name}`'} must be a "
            f"jdoptim.aggregation.Aggregator, but got {describe(aggregator)}."
        )


def check_disjoint(groups: Iterable[dict[str, Any]], name: str) -> None:
    """Checks that no parameter appears in two of ``groups``."""
    seen: set[int] = set()
    for group in groups:
        params = group["params"]
        for param in [params] if isinstance(params, Tensor) else params:
            if id(param) in seen:
                raise ValueError(
                    f"`{name}` must have every parameter in only one parameter group, but a "
                    f"parameter of shape {list(param.shape)} appears in several."
                )
            seen.add(id(param))


def check_process_group(process_group: Any) -> None:
    """Checks that ``process_group`` is None or a ``torch.distributed`` process group."""
    if process_group is None:
        return
    import torch.distributed as dist

    if not dist.is_available() or not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            "`process_group` must be None or a torch.distributed.ProcessGroup (e.g. "
            "torch.distributed.group.WORLD, or one made by torch.distributed.new_group), but got "
            f"{process_group!r} of type {type(process_group).__name__}."
        )


def as_losses(losses: Any) -> list[Tensor]:
    """The losses as a non-empty list of tensors requiring grad."""
    loss_list = as_tensors(losses, "losses")
    if not loss_list:
        raise ValueError("`losses` must contain at least one loss, but got an empty sequence.")
    if sum(loss.numel() for loss in loss_list) == 0:
        raise ValueError("`losses` must contain at least one element, but all tensors are empty.")
    for i, loss in enumerate(loss_list):
        if not loss.requires_grad:
            raise ValueError(
                f"`losses` must require grad, but element {i} of shape {list(loss.shape)} does "
                "not: compute it from the parameters with gradients enabled (not under "
                "torch.no_grad() and not detached)."
            )
    return loss_list


def check_devices(losses: list[Tensor], params: list[Tensor]) -> None:
    """Checks that the losses hold values and lie on the device of the parameters.

    A loss on the ``meta`` device holds no values; a loss on another device than all the
    parameters (when these share one device) cannot be differentiated with respect to them.
    """
    devices = {param.device for param in params}
    for i, loss in enumerate(losses):
        if loss.device.type == "meta":
            raise ValueError(
                f"`losses` must hold values, but element {i} is on the meta device (a tensor "
                "without data, e.g. from a model built under torch.device('meta') and never "
                "materialised): move the model to a real device (model.to_empty(device=...) then "
                "initialise it) before computing the losses."
            )
        if len(devices) == 1 and loss.device not in devices:
            (device,) = devices
            raise ValueError(
                f"`losses` must be on the device of the parameters ({device}), but element {i} "
                f"is on {loss.device}: compute the losses from the model's outputs on {device}."
            )


def requires_grad(result: Any) -> bool:
    """Whether a closure's result is losses to back-propagate (some tensor requires grad)."""
    if isinstance(result, Tensor):
        return result.requires_grad
    if isinstance(result, (list, tuple)):
        return any(isinstance(item, Tensor) and item.requires_grad for item in result)
    return False


def detached_sum(losses: list[Tensor]) -> Tensor:
    """The sum of all the losses' elements, detached: what a closure returns to the inner step."""
    return torch.stack([loss.detach().sum() for loss in losses]).sum()
