"""``state_dict`` / ``load_state_dict`` of ``JacobianOptimizer``: the wrapped optimizer's state plus
the state of the aggregators, the weighting (or the scalarizer) and the shared generator, under
the key ``"jdoptim"``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn
from torch.optim import Optimizer

from ._distributed import Sync


class ModeModules(NamedTuple):
    """The modules of the optimizer's mode whose state it saves and restores: the default
    aggregator and the weighting, or the scalarizer (each None when absent)."""

    aggregator: nn.Module | None
    weighting: nn.Module | None
    scalarizer: nn.Module | None


def keep_aggregators_across_loads(inner: Optimizer) -> None:
    """Keeps ``"aggregator"`` keys out of the inner state dict and alive across its loads.

    Aggregators are modules: they are not saved in the parameter groups (so that
    ``torch.load(weights_only=True)`` works) and loading a state dict keeps the current ones.
    """
    kept: list[Any] = []

    def strip(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        groups = [
            {key: value for key, value in group.items() if key != "aggregator"}
            for group in state_dict["param_groups"]
        ]
        return {**state_dict, "param_groups": groups}

    def remember(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
        kept[:] = [group.get("aggregator") for group in optimizer.param_groups]

    def restore(optimizer: Optimizer) -> None:
        for group, aggregator in zip(optimizer.param_groups, kept, strict=False):
            group.pop("aggregator", None)
            if aggregator is not None:
                group["aggregator"] = aggregator
        kept.clear()

    inner.register_state_dict_post_hook(strip)
    inner.register_load_state_dict_pre_hook(remember)
    inner.register_load_state_dict_post_hook(restore)


def jdoptim_state(
    modules: ModeModules, param_groups: list[dict[str, Any]], sync: Sync
) -> dict[str, Any]:
    """The ``"jdoptim"`` entry of the state dict: plain tensors, numbers and containers."""
    aggregator, weighting, scalarizer = modules
    state: dict[str, Any] = {
        "aggregator": None if aggregator is None else dict(aggregator.state_dict()),
        "weighting": None if weighting is None else dict(weighting.state_dict()),
        "group_aggregators": {
            index: dict(group["aggregator"].state_dict())
            for index, group in enumerate(param_groups)
            if "aggregator" in group
        },
    }
    if scalarizer is not None:
        state["scalarizer"] = dict(scalarizer.state_dict())
    if sync.shared_random is not None:
        state["shared_rng_state"] = sync.shared_random.state()
    return state


def load_jdoptim_state(
    extra: dict[str, Any], modules: ModeModules, param_groups: list[dict[str, Any]], sync: Sync
) -> None:
    """Loads the ``"jdoptim"`` entry into the current modules (the caller's transaction undoes a
    partial load). A state of scalarizer mode only loads in scalarizer mode, and conversely."""
    aggregator, weighting, scalarizer = modules
    saved_scalarizer = extra.get("scalarizer")
    if (saved_scalarizer is None) != (scalarizer is None):
        was, now = ("with", "without") if scalarizer is None else ("without", "with")
        raise ValueError(
            f"`state_dict` was saved by a JacobianOptimizer {was} a scalarizer, but this one is "
            f"{now} one: a state dict only loads into an optimizer of the same mode "
            "(scalarizer mode, or Jacobian and Gramian modes)."
        )
    loads: list[tuple[nn.Module, dict[str, Any]]] = []
    if scalarizer is not None and saved_scalarizer is not None:
        loads.append((scalarizer, saved_scalarizer))
    if aggregator is not None and extra.get("aggregator") is not None:
        loads.append((aggregator, extra["aggregator"]))
    if weighting is not None and extra.get("weighting") is not None:
        loads.append((weighting, extra["weighting"]))
    for index, saved in extra.get("group_aggregators", {}).items():
        if index >= len(param_groups) or "aggregator" not in param_groups[index]:
            raise ValueError(
                "`state_dict` holds the state of an aggregator of parameter group "
                f"{index}, but this optimizer has no aggregator for that group."
            )
        loads.append((param_groups[index]["aggregator"], saved))
    for module, saved in loads:
        module.load_state_dict(saved)
    if sync.shared_random is not None and "shared_rng_state" in extra:
        sync.shared_random.load_state(extra["shared_rng_state"])


def stateful_modules(modules: ModeModules, param_groups: list[dict[str, Any]]) -> list[nn.Module]:
    """The modules whose state the optimizer saves and restores: each once."""
    found = [m for m in modules if m is not None]
    for group in param_groups:
        module = group.get("aggregator")
        if module is not None and all(module is not m for m in found):
            found.append(module)
    return found
