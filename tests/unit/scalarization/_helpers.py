"""Helpers shared by the scalarizer tests."""

from __future__ import annotations

import io

import torch
from hypothesis import strategies as st
from torch import Tensor, nn


def reload(source: nn.Module, fresh: nn.Module) -> nn.Module:
    """Loads ``source.state_dict()`` into ``fresh`` through ``torch.save`` and
    ``torch.load(weights_only=True)``, as a checkpoint would, and returns ``fresh``."""
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def value_and_grad(scalarizer: nn.Module, values: Tensor) -> tuple[Tensor, Tensor]:
    """The scalarized value and its gradient with respect to ``values``."""
    leaf = values.detach().clone().requires_grad_(True)
    value = scalarizer(leaf)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


#: Moderate finite numbers, for property tests.
finite_floats = st.floats(min_value=-100.0, max_value=100.0, allow_nan=False, width=32)
positive_floats = st.floats(min_value=0.015625, max_value=100.0, allow_nan=False, width=32)


def vectors(elements: st.SearchStrategy[float], min_size: int = 1, max_size: int = 6):  # type: ignore[no-untyped-def]
    """Float64 vectors drawn from ``elements``."""
    return st.lists(elements, min_size=min_size, max_size=max_size).map(
        lambda xs: torch.tensor(xs, dtype=torch.float64)
    )
