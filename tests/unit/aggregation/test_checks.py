"""The per-row vectors of the aggregators (pref_vector, weights, leak) hold finite values only."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from jdoptim.aggregation import (
    AlignedMTL,
    AlignedMTLWeighting,
    ConFIG,
    Constant,
    ConstantWeighting,
    DualProj,
    DualProjWeighting,
    GradDrop,
    UPGrad,
    UPGradWeighting,
)

# (name of the argument, constructor taking the vector)
CONSTRUCTORS: list[tuple[str, Callable[[Tensor], nn.Module]]] = [
    ("pref_vector", lambda v: UPGrad(pref_vector=v)),
    ("pref_vector", lambda v: UPGradWeighting(pref_vector=v)),
    ("pref_vector", lambda v: DualProj(pref_vector=v)),
    ("pref_vector", lambda v: DualProjWeighting(pref_vector=v)),
    ("pref_vector", lambda v: ConFIG(pref_vector=v)),
    ("pref_vector", lambda v: AlignedMTL(pref_vector=v)),
    ("pref_vector", lambda v: AlignedMTLWeighting(pref_vector=v)),
    ("weights", lambda v: Constant(v)),
    ("weights", lambda v: ConstantWeighting(v)),
    ("leak", lambda v: GradDrop(leak=v)),
]

NON_FINITE = [float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize(("name", "build"), CONSTRUCTORS)
@pytest.mark.parametrize("bad", NON_FINITE)
def test_non_finite_vector_is_refused_at_construction(
    name: str, build: Callable[[Tensor], nn.Module], bad: float
) -> None:
    with pytest.raises(ValueError, match=rf"`{name}` must contain only finite values"):
        build(torch.tensor([0.5, bad]))


@pytest.mark.parametrize(("name", "build"), CONSTRUCTORS)
def test_finite_vector_is_accepted(name: str, build: Callable[[Tensor], nn.Module]) -> None:
    module = build(torch.tensor([0.5, 0.25]))

    assert isinstance(module, nn.Module)


# The modules whose vector is a buffer of their own (the aggregators wrapping a weighting hold it
# in their weighting).
SETTABLE: list[tuple[str, Callable[[], nn.Module]]] = [
    ("pref_vector", lambda: ConFIG()),
    ("pref_vector", lambda: AlignedMTLWeighting()),
    ("pref_vector", lambda: UPGradWeighting()),
    ("pref_vector", lambda: DualProjWeighting()),
    ("weights", lambda: ConstantWeighting(torch.ones(2))),
    ("leak", lambda: GradDrop()),
]


@pytest.mark.parametrize(("name", "build"), SETTABLE)
@pytest.mark.parametrize("bad", NON_FINITE)
def test_non_finite_vector_is_refused_at_assignment(
    name: str, build: Callable[[], nn.Module], bad: float
) -> None:
    module = build()
    before = getattr(module, name)

    with pytest.raises(ValueError, match=rf"`{name}` must contain only finite values"):
        setattr(module, name, torch.tensor([bad, 1.0]))
    after = getattr(module, name)
    assert after is before  # nothing half-applied


@pytest.mark.parametrize(("name", "build"), SETTABLE)
def test_finite_vector_can_be_assigned_and_stays_a_buffer(
    name: str, build: Callable[[], nn.Module]
) -> None:
    module = build()
    vector = torch.tensor([0.25, 0.75])

    setattr(module, name, vector)

    assert getattr(module, name) is vector
    assert dict(module.named_buffers())[name] is vector


@pytest.mark.parametrize(("name", "build"), SETTABLE)
def test_vector_of_the_wrong_rank_is_refused_at_assignment(
    name: str, build: Callable[[], nn.Module]
) -> None:
    module = build()

    with pytest.raises(ValueError, match=rf"`{name}` must be a 1-D tensor"):
        setattr(module, name, torch.ones(2, 2))


def test_constant_weights_cannot_be_set_to_none() -> None:
    weighting = ConstantWeighting(torch.ones(2))

    with pytest.raises(TypeError, match=r"`weights` must be a torch\.Tensor"):
        weighting.weights = None  # type: ignore[assignment]


@pytest.mark.parametrize("name", ["pref_vector", "leak"])
def test_optional_vector_can_be_reset_to_none(name: str) -> None:
    module = (
        ConFIG(pref_vector=torch.ones(2)) if name == "pref_vector" else GradDrop(leak=torch.ones(2))
    )

    setattr(module, name, None)

    assert getattr(module, name) is None
