"""Behaviour shared by every scalarizer: call contract, hooks, dtypes, state and repr."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import pytest
import torch

import jdoptim
from jdoptim import scalarization
from jdoptim.scalarization import (
    COSMOS,
    DWA,
    FAMO,
    IMTLL,
    PBI,
    STCH,
    UW,
    Constant,
    GeometricMean,
    Mean,
    Random,
    Scalarizer,
    Sum,
)

from ._helpers import reload

#: One factory per scalarizer, for values of shape (3,).
FACTORIES: dict[str, Callable[[], Scalarizer]] = {
    "Constant": lambda: Constant(torch.tensor([1.0, 2.0, 3.0])),
    "Mean": Mean,
    "Sum": Sum,
    "Random": Random,
    "GeometricMean": GeometricMean,
    "STCH": lambda: STCH(0.5, weights=torch.tensor([0.2, 0.3, 0.5])),
    "COSMOS": lambda: COSMOS(0.5, torch.tensor([0.2, 0.3, 0.5])),
    "PBI": lambda: PBI(5.0, torch.tensor([1.0, 2.0, 3.0])),
    "UW": lambda: UW(3),
    "IMTLL": lambda: IMTLL(3),
    "DWA": DWA,
    "FAMO": lambda: FAMO(3),
}
NAMES = sorted(FACTORIES)
#: The scalarizers that carry a tensor of a fixed shape, which the values must match.
SHAPED = ["Constant", "STCH", "COSMOS", "PBI", "UW", "IMTLL", "FAMO"]
VALUES = torch.tensor([0.5, 1.5, 2.5])


def _build(name: str) -> Scalarizer:
    torch.manual_seed(0)
    return FACTORIES[name]()


def test_the_package_exports_exactly_the_twelve_scalarizers_and_the_base() -> None:
    assert set(scalarization.__all__) == set(NAMES) | {"Scalarizer"}
    assert len(scalarization.__all__) == 13
    assert jdoptim.scalarization is scalarization
    assert "scalarization" in jdoptim.__all__


def test_the_base_class_is_abstract() -> None:
    with pytest.raises(TypeError):
        Scalarizer()  # type: ignore[abstract]


@pytest.mark.parametrize("name", NAMES)
def test_output_is_a_differentiable_0d_tensor(name: str) -> None:
    scalarizer = _build(name)
    values = VALUES.clone().requires_grad_(True)

    output = scalarizer(values)
    output.backward()

    assert isinstance(scalarizer, torch.nn.Module)
    assert isinstance(scalarizer, Scalarizer)
    assert output.shape == ()
    assert output.dtype == torch.float32
    assert values.grad is not None
    assert values.grad.shape == values.shape
    assert torch.isfinite(values.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_forward_hooks_and_pre_hooks_fire_on_every_call(name: str) -> None:
    scalarizer = _build(name)
    seen: list[str] = []
    scalarizer.register_forward_pre_hook(lambda module, args: seen.append("pre"))
    scalarizer.register_forward_hook(lambda module, args, output: seen.append("post"))

    scalarizer(VALUES)
    scalarizer(VALUES)

    assert seen == ["pre", "post", "pre", "post"]


@pytest.mark.parametrize("name", NAMES)
def test_float64_values_give_a_float64_result(name: str) -> None:
    output = _build(name)(VALUES.double())

    assert output.dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_a_call_under_no_grad_works(name: str) -> None:
    with torch.no_grad():
        output = _build(name)(VALUES)

    assert output.shape == ()
    assert not output.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_values_that_are_not_a_tensor_raise_a_type_error(name: str) -> None:
    with pytest.raises(TypeError, match=r"`values` must be a torch\.Tensor, but got list"):
        _build(name)([0.5, 1.5, 2.5])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_integer_values_raise_a_type_error(name: str) -> None:
    with pytest.raises(TypeError, match=r"must have a floating dtype, but got torch\.int64"):
        _build(name)(torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("name", NAMES)
def test_values_are_positional_only(name: str) -> None:
    with pytest.raises(TypeError):
        _build(name)(values=VALUES)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", SHAPED)
def test_values_of_another_shape_raise_a_value_error_even_with_as_many_elements(name: str) -> None:
    scalarizer = _build(name)

    with pytest.raises(ValueError, match=r"`values` must have the shape of `\w+`, \(3,\), but got"):
        scalarizer(VALUES.reshape(1, 3))
    with pytest.raises(ValueError, match=r"\(3,\), but got shape \(2,\)"):
        scalarizer(VALUES[:2])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_give_a_non_finite_result_without_raising(name: str, bad: float) -> None:
    values = VALUES.clone()
    values[1] = bad

    output = _build(name)(values)

    assert not torch.isfinite(output)


@pytest.mark.parametrize("name", NAMES)
def test_str_is_the_class_name(name: str) -> None:
    assert str(_build(name)) == name


@pytest.mark.parametrize(
    ("scalarizer", "expected"),
    [
        (Mean(), "Mean()"),
        (Sum(), "Sum()"),
        (Random(), "Random()"),
        (GeometricMean(), "GeometricMean()"),
        (STCH(mu=0.1), "STCH(mu=0.1, weights=None, reference=None)"),
        (DWA(), "DWA(temperature=2.0)"),
        (FAMO(3), "FAMO(shape=(3,), lr=0.025, weight_decay=0.001)"),
        (FAMO((2, 2), lr=0.1, weight_decay=0), "FAMO(shape=(2, 2), lr=0.1, weight_decay=0)"),
        (UW(3), "UW(shape=(3,))"),
        (UW(torch.Size([2, 3])), "UW(shape=(2, 3))"),
        (IMTLL([4]), "IMTLL(shape=(4,))"),
        (Constant(torch.tensor([1.0, 2.0])), "Constant(weights=tensor([1., 2.]))"),
        (COSMOS(0.5, torch.tensor([1.0, 2.0])), "COSMOS(lambda_=0.5, weights=tensor([1., 2.]))"),
        (
            PBI(5.0, torch.tensor([1.0, 2.0])),
            "PBI(theta=5.0, weights=tensor([1., 2.]), reference=None)",
        ),
        (
            STCH(1.0, reference=torch.tensor([0.0, 1.0])),
            "STCH(mu=1.0, weights=None, reference=tensor([0., 1.]))",
        ),
    ],
)
def test_repr(scalarizer: Scalarizer, expected: str) -> None:
    assert repr(scalarizer) == expected


def test_only_uw_and_imtll_have_learned_parameters() -> None:
    with_parameters = {name for name in NAMES if list(_build(name).parameters())}

    assert with_parameters == {"UW", "IMTLL"}


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_loads_into_a_fresh_instance_and_gives_the_same_values(name: str) -> None:
    source = _build(name)
    with torch.no_grad():
        for values in (VALUES, VALUES * 2, VALUES + 1):
            source(values)
            if isinstance(source, DWA):
                source.step()
            if isinstance(source, FAMO):
                source.update(values * 0.9)
        for parameter in source.parameters():
            parameter.add_(torch.tensor([0.1, -0.2, 0.3]))
    fresh = reload(source, _build(name))

    torch.manual_seed(1)
    expected = source(VALUES * 3)
    torch.manual_seed(1)
    actual = fresh(VALUES * 3)

    assert torch.equal(actual, expected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("copy_with", ["deepcopy", "pickle"])
def test_a_copied_scalarizer_continues_like_the_original(name: str, copy_with: str) -> None:
    source = _build(name)
    with torch.no_grad():
        source(VALUES)
        if isinstance(source, DWA):
            source.step()
            source(VALUES * 0.5)
            source.step()
        source(VALUES * 0.7)
    if copy_with == "deepcopy":
        copied = copy.deepcopy(source)
    else:
        copied = pickle.loads(pickle.dumps(source))
    if isinstance(source, FAMO):
        source.update(VALUES * 0.6)
        copied.update(VALUES * 0.6)

    torch.manual_seed(4)
    expected = source(VALUES * 0.4)
    torch.manual_seed(4)
    assert torch.equal(copied(VALUES * 0.4), expected)


@pytest.mark.parametrize("name", NAMES)
def test_a_0d_tensor_is_accepted_when_the_shape_allows_it(name: str) -> None:
    scalar_factories: dict[str, Callable[[], Scalarizer]] = {
        "Constant": lambda: Constant(torch.tensor(2.0)),
        "STCH": lambda: STCH(0.5),
        "COSMOS": lambda: COSMOS(0.5, torch.tensor(1.0)),
        "PBI": lambda: PBI(5.0, torch.tensor(1.0)),
        "UW": lambda: UW(()),
        "IMTLL": lambda: IMTLL(()),
        "FAMO": lambda: FAMO(()),
    }
    scalarizer = scalar_factories.get(name, FACTORIES[name])()
    values = torch.tensor(1.5, requires_grad=True)

    output = scalarizer(values)
    output.backward()

    assert output.shape == ()
    assert torch.isfinite(output)
    assert values.grad is not None
    assert values.grad.shape == ()
