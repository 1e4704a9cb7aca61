"""Checks of the optimizer's arguments: aggregators, parameter groups, process groups, losses."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .._describe import describe
from ..aggregation import Aggregator, GeneralizedWeighting, Weighting
from ..autojac._checks import as_tensors, check_parallel_chunk_size
from ..autojac._chunk_size import ChunkSize
from ._torch_optimizer import SharedAttributes


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


def check_gramian_mode(
    aggregator: Aggregator,
    weighting: Weighting | GeneralizedWeighting | None,
    engine: Any,
) -> None:
    """Checks ``engine`` and ``weighting``: Gramian mode needs a weighting of the Gramian."""
    if engine is not None and not callable(getattr(engine, "compute_gramian", None)):
        raise TypeError(
            "`engine` must be a jdoptim.autogram.Engine (an object with `compute_gramian`), "
            f"but got {type(engine).__name__}."
        )
    if weighting is not None:
        if engine is None:
            raise ValueError(
                "`weighting` is only used in Gramian mode: pass `engine` too, or drop "
                f"`weighting` and pass an aggregator, but got weighting={weighting!r} and "
                "engine=None."
            )
        if not isinstance(weighting, (Weighting, GeneralizedWeighting)):
            raise TypeError(
                "`weighting` must be a jdoptim.aggregation.Weighting or GeneralizedWeighting, "
                f"but got {type(weighting).__name__}."
            )
        if isinstance(weighting, Weighting) and weighting._reads_jacobian():
            raise ValueError(
                f"`weighting` must read the Gramian in Gramian mode (with `engine`), but "
                f"{weighting!r} reads the Jacobian itself, which Gramian mode never forms: use it "
                "in Jacobian mode, through WeightedAggregator."
            )
    elif engine is not None and not isinstance(
        getattr(aggregator, "gramian_weighting", None), Weighting
    ):
        raise ValueError(
            f"`aggregator` must have a Gramian weighting in Gramian mode (with `engine`), but "
            f"{aggregator!r} has none. Use a Gramian-weighted aggregator such as UPGrad or "
            "Mean, pass `weighting`, or drop `engine` to use Jacobian mode."
        )


def check_group(
    group: dict[str, Any], where: str, gramian_mode: bool, scalarizer_mode: bool = False
) -> None:
    """Checks a parameter group's ``"aggregator"`` key (refused in Gramian and scalarizer
    modes)."""
    if "aggregator" not in group:
        return
    if scalarizer_mode:
        raise ValueError(
            f"{where} has an 'aggregator' key, which cannot be combined with `scalarizer`: a "
            "group's aggregator needs the per-loss gradients, which a scalarizer never computes. "
            "Remove the key, or drop `scalarizer` and use aggregators."
        )
    check_aggregator(group["aggregator"], f"{where}'s 'aggregator'")
    if gramian_mode:
        raise ValueError(
            f"{where} has an 'aggregator' key, but in Gramian mode (with `engine`) one "
            "weighting serves all groups: remove the key or use Jacobian mode."
        )


def check_scalarizer_mode(
    scalarizer: Any,
    aggregator: Any,
    weighting: Any,
    engine: Any,
    parallel_chunk_size: Any,
) -> None:
    """Checks ``scalarizer`` and that no argument of the other modes comes with it."""
    from ..scalarization import Scalarizer

    if not isinstance(scalarizer, Scalarizer):
        raise TypeError(
            "`scalarizer` must be None or a jdoptim.scalarization.Scalarizer, but got "
            f"{describe(scalarizer)}."
        )
    for name, value in (
        ("aggregator", aggregator),
        ("weighting", weighting),
        ("engine", engine),
        # "auto" is the default, so only a chosen chunk size counts as given.
        ("parallel_chunk_size", None if parallel_chunk_size == "auto" else parallel_chunk_size),
    ):
        if value is not None:
            raise ValueError(
                f"`scalarizer` cannot be combined with `{name}`: a scalarizer replaces the "
                "Jacobian with one ordinary backward pass of the scalarized losses, so there is "
                f"nothing for `{name}` to do. Pass either `scalarizer` or `{name}`, but got "
                f"scalarizer={scalarizer!r} and {name}={value!r}."
            )


def check_arguments(
    optimizer: Any,
    aggregator: Aggregator | None,
    scalarizer: Any,
    weighting: Weighting | GeneralizedWeighting | None,
    engine: Any,
    parallel_chunk_size: ChunkSize,
    process_group: Any,
) -> Aggregator | None:
    """Checks the arguments of ``JacobianOptimizer`` (everything before anything is changed);
    returns the default aggregator: ``aggregator``, else UPGrad, and None in scalarizer mode."""
    if isinstance(optimizer, SharedAttributes) or not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            "`optimizer` must be a torch.optim.Optimizer (not a JacobianOptimizer), but got "
            f"{type(optimizer).__name__}."
        )
    if scalarizer is not None:
        check_scalarizer_mode(scalarizer, aggregator, weighting, engine, parallel_chunk_size)
    elif aggregator is None:
        from ..aggregation import UPGrad

        aggregator = UPGrad()
    if aggregator is not None:
        check_aggregator(aggregator, "aggregator")
        check_gramian_mode(aggregator, weighting, engine)
    check_parallel_chunk_size(parallel_chunk_size)
    check_process_group(process_group)
    for index, group in enumerate(optimizer.param_groups):
        where = f"`optimizer` parameter group {index}"
        check_group(group, where, engine is not None, scalarizer is not None)
    check_disjoint(optimizer.param_groups, "optimizer")
    return aggregator


# The arguments of `backward` that `step` passes on (`aggregate` gets its own message).
_STEP_BACKWARD_ARGUMENTS = frozenset(
    {"features", "grad_tensors", "retain_graph", "aggregate", "aggregate_at"}
)


def step_arguments(
    losses: Any, closure: Callable[[], Any] | None, backward_kwargs: dict[str, Any]
) -> tuple[Any, Callable[[], Any] | None]:
    """``(losses, closure)`` of a call of ``step``, checked; a callable first argument is a
    closure, as in ``torch.optim`` (``LBFGS``'s idiom ``opt.step(closure)``)."""
    if callable(losses) and not isinstance(losses, Tensor) and closure is None:
        losses, closure = None, losses
    unknown = sorted(set(backward_kwargs) - _STEP_BACKWARD_ARGUMENTS)
    if unknown:
        passed_on = ", ".join(sorted(_STEP_BACKWARD_ARGUMENTS - {"aggregate"}))
        raise TypeError(
            f"`step` got unexpected keyword arguments {unknown}: it takes `closure` and the "
            f"arguments of `backward` that it passes on ({passed_on})."
        )
    if "aggregate" in backward_kwargs:
        raise ValueError(
            "`aggregate` is not an argument of `step`: to accumulate Jacobians over "
            "micro-batches, call `opt.backward(losses, aggregate=False)` on each, then "
            "`opt.aggregate()` and `opt.step()`."
        )
    if closure is not None and losses is not None:
        raise ValueError(
            "`losses` and `closure` cannot both be given: return the losses from the closure "
            "instead."
        )
    if closure is None and losses is None and backward_kwargs:
        raise TypeError(f"`step` got backward arguments {sorted(backward_kwargs)} but no `losses`.")
    if closure is not None and not callable(closure):
        raise TypeError(f"`closure` must be callable, but got {type(closure).__name__}.")
    return losses, closure


def check_flags(**flags: object) -> None:
    """Checks that each keyword argument is a bool (``TypeError`` naming it)."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be a bool, but got {value!r}.")


def refuse_jacobian_arguments(
    features: Any, grad_tensors: Any, aggregate: bool, why: Callable[[str], str]
) -> None:
    """Refuses the arguments of ``backward`` that need per-loss gradients (Gramian and scalarizer
    modes); ``why(name)`` says why, in the words of the mode."""
    for name, given in (
        ("features", features is not None),
        ("grad_tensors", grad_tensors is not None),
        ("aggregate=False", not aggregate),
    ):
        if given:
            raise ValueError(why(name))


def gramian_mode_refusal(name: str) -> str:
    return (
        f"`{name}` is not supported in Gramian mode (with `engine`); drop it or use Jacobian mode."
    )


def scalarizer_mode_refusal(name: str) -> str:
    return (
        f"`{name}` cannot be combined with `scalarizer`: a scalarizer replaces the Jacobian of the "
        "losses with one ordinary backward pass, so there are no per-loss gradients to use. Drop "
        f"`{name}`, or use an aggregator instead of the scalarizer."
    )
