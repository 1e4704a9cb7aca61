"""DWA: dynamic weight average over the last two epochs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jdoptim.scalarization import DWA

from ._helpers import positive_floats, reload, value_and_grad, vectors


def _dwa_weights(older: list[float], newer: list[float], temperature: float) -> list[float]:
    """m softmax(newer / older / T), computed independently with floats."""
    exps = [math.exp(n / o / temperature) for o, n in zip(older, newer)]
    return [len(exps) * e / sum(exps) for e in exps]


def _f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_trajectory_over_four_epochs() -> None:
    scalarizer = DWA(temperature=2.0)
    # Epochs 1 and 2: weights 1, the averages are [3, 6] and [1.5, 4.5].
    for losses in ([2.0, 4.0], [4.0, 8.0]):
        value, grad = value_and_grad(scalarizer, _f64(*losses))
        assert value.item() == sum(losses)
        assert grad.tolist() == [1.0, 1.0]
    scalarizer.step()
    for losses in ([1.5, 6.0], [1.5, 3.0]):
        _, grad = value_and_grad(scalarizer, _f64(*losses))
        assert grad.tolist() == [1.0, 1.0]
    scalarizer.step()
    # Epoch 3: r = [0.5, 0.75]; its average is [1.5, 3.5].
    expected = _dwa_weights([3.0, 6.0], [1.5, 4.5], 2.0)
    for losses in ([1.0, 3.0], [2.0, 4.0]):
        value, grad = value_and_grad(scalarizer, _f64(*losses))
        assert grad.tolist() == pytest.approx(expected, rel=1e-14)
        assert value.item() == pytest.approx(
            expected[0] * losses[0] + expected[1] * losses[1], rel=1e-14
        )
    scalarizer.step()
    # Epoch 4: r = [1.5 / 1.5, 3.5 / 4.5].
    _, grad = value_and_grad(scalarizer, _f64(5.0, 5.0))
    assert grad.tolist() == pytest.approx(_dwa_weights([1.5, 4.5], [1.5, 3.5], 2.0), rel=1e-14)


def test_the_temperature_flattens_the_weights() -> None:
    weights = []
    for temperature in (0.5, 2.0, 50.0):
        scalarizer = DWA(temperature)
        for losses in ([4.0, 4.0], [1.0, 3.0]):
            scalarizer(_f64(*losses))
            scalarizer.step()
        weights.append(value_and_grad(scalarizer, _f64(1.0, 1.0))[1])

    spreads = [(w[1] - w[0]).item() for w in weights]
    assert spreads[0] > spreads[1] > spreads[2] > 0
    assert spreads[1] == pytest.approx(
        _dwa_weights([4.0, 4.0], [1.0, 3.0], 2.0)[1] - _dwa_weights([4.0, 4.0], [1.0, 3.0], 2.0)[0]
    )


def test_multi_dimensional_values_use_a_softmax_over_all_entries() -> None:
    scalarizer = DWA(1.0)
    older = [[1.0, 2.0], [4.0, 8.0]]
    newer = [[1.0, 1.0], [1.0, 4.0]]
    for losses in (older, newer):
        scalarizer(torch.tensor(losses, dtype=torch.float64))
        scalarizer.step()

    _, grad = value_and_grad(scalarizer, torch.ones(2, 2, dtype=torch.float64))

    flat_older = [x for row in older for x in row]
    flat_newer = [x for row in newer for x in row]
    expected = _dwa_weights(flat_older, flat_newer, 1.0)
    assert grad.shape == (2, 2)
    assert grad.flatten().tolist() == pytest.approx(expected, rel=1e-14)


def test_0d_values() -> None:
    scalarizer = DWA()
    for losses in (4.0, 2.0):
        scalarizer(torch.tensor(losses))
        scalarizer.step()

    value, grad = value_and_grad(scalarizer, torch.tensor(3.0))

    assert value.item() == pytest.approx(3.0)
    assert grad.item() == pytest.approx(1.0)


def test_step_without_a_call_does_nothing() -> None:
    scalarizer = DWA()
    scalarizer.step()
    scalarizer(_f64(4.0, 4.0))
    scalarizer.step()
    scalarizer.step()  # an empty epoch: no average appended
    scalarizer(_f64(2.0, 3.0))
    scalarizer.step()

    _, grad = value_and_grad(scalarizer, _f64(1.0, 1.0))

    assert grad.tolist() == pytest.approx(_dwa_weights([4.0, 4.0], [2.0, 3.0], 2.0), rel=1e-14)


def test_calls_under_no_grad_are_accumulated() -> None:
    scalarizer = DWA()
    with torch.no_grad():
        for losses in ([4.0, 4.0], [2.0, 3.0]):
            scalarizer(_f64(*losses))
            scalarizer.step()

    _, grad = value_and_grad(scalarizer, _f64(1.0, 1.0))

    assert grad.tolist() == pytest.approx(_dwa_weights([4.0, 4.0], [2.0, 3.0], 2.0), rel=1e-14)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf")])
def test_a_call_with_non_finite_values_returns_non_finite_and_is_not_accumulated(
    bad: float,
) -> None:
    scalarizer = DWA()
    scalarizer(_f64(4.0, 4.0))
    assert not torch.isfinite(scalarizer(_f64(bad, 1.0)))
    scalarizer(_f64(2.0, 6.0))
    scalarizer.step()  # average [3, 5], not spoilt by the non-finite call
    assert not torch.isfinite(scalarizer(_f64(1.0, bad)))  # alone in its epoch: nothing counted
    scalarizer.step()
    scalarizer(_f64(1.5, 2.5))
    scalarizer.step()

    _, grad = value_and_grad(scalarizer, _f64(1.0, 1.0))

    assert grad.tolist() == pytest.approx(_dwa_weights([3.0, 5.0], [1.5, 2.5], 2.0), rel=1e-14)


def test_a_shape_change_within_an_epoch_raises_without_counting_the_call() -> None:
    scalarizer = DWA()
    scalarizer(_f64(4.0, 4.0))

    with pytest.raises(ValueError, match=r"keep the shape \(2,\) within an epoch.*reset\(\)"):
        scalarizer(_f64(1.0, 1.0, 1.0))

    scalarizer.step()
    scalarizer(_f64(2.0, 3.0))
    scalarizer.step()
    _, grad = value_and_grad(scalarizer, _f64(1.0, 1.0))
    assert grad.tolist() == pytest.approx(_dwa_weights([4.0, 4.0], [2.0, 3.0], 2.0), rel=1e-14)


def test_a_shape_change_across_epochs_raises_until_reset() -> None:
    scalarizer = DWA()
    for losses in ([4.0, 4.0], [2.0, 3.0]):
        scalarizer(_f64(*losses))
        scalarizer.step()

    with pytest.raises(ValueError, match=r"the shape \(2,\) of the previous epochs.*reset\(\)"):
        scalarizer(_f64(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"the shape \(2,\) of the previous epochs"):
        scalarizer(torch.ones(1, 2, dtype=torch.float64))

    scalarizer.reset()
    value, grad = value_and_grad(scalarizer, _f64(1.0, 2.0, 3.0))
    assert value.item() == 6.0
    assert grad.tolist() == [1.0, 1.0, 1.0]


def test_reset_forgets_the_sum_the_count_and_the_history() -> None:
    scalarizer = DWA()
    for losses in ([4.0, 4.0], [2.0, 3.0], [1.0, 9.0]):
        scalarizer(_f64(*losses))
        scalarizer.step()
    scalarizer(_f64(7.0, 7.0))

    scalarizer.reset()

    assert scalarizer.state_dict()["_extra_state"] == {"sum": None, "count": None, "history": []}
    assert value_and_grad(scalarizer, _f64(1.0, 1.0))[1].tolist() == [1.0, 1.0]


def _run(scalarizer: DWA, schedule: list[list[float] | None]) -> list[tuple[torch.Tensor, ...]]:
    """Calls the scalarizer on each list of losses, and ``step()`` on each None."""
    outputs = []
    for losses in schedule:
        if losses is None:
            scalarizer.step()
        else:
            outputs.append(value_and_grad(scalarizer, torch.tensor(losses)))
    return outputs


SCHEDULE: list[list[float] | None] = [
    [2.0, 4.0, 1.0],
    [4.0, 8.0, 3.0],
    None,
    [1.5, 6.0, 0.3],
    [1.7, 3.0, 0.1],
    None,
    [1.1, 3.3, 0.7],
    [0.9, 2.1, 0.2],
    None,
    [0.7, 2.2, 0.3],
    [0.6, 1.9, 0.1],
    None,
    [0.5, 1.3, 0.9],
]


@pytest.mark.parametrize("split", [1, 3, 4, 7, 8, 10, 12])
def test_a_reload_into_a_fresh_instance_continues_bit_for_bit(split: int) -> None:
    uninterrupted = _run(DWA(1.5), SCHEDULE)
    first = DWA(1.5)
    _run(first, SCHEDULE[:split])

    resumed = reload(first, DWA(1.5))
    assert isinstance(resumed, DWA)
    outputs = _run(resumed, SCHEDULE[split:])

    expected = uninterrupted[len(uninterrupted) - len(outputs) :]
    assert len(outputs) > 0
    for (value, grad), (expected_value, expected_grad) in zip(outputs, expected):
        assert torch.equal(value, expected_value)
        assert torch.equal(grad, expected_grad)


def test_a_fresh_state_dict_loads_into_a_fresh_instance() -> None:
    fresh = reload(DWA(), DWA())

    assert isinstance(fresh, DWA)
    assert value_and_grad(fresh, _f64(1.0, 2.0))[1].tolist() == [1.0, 1.0]


def test_a_malformed_extra_state_raises_a_value_error() -> None:
    state = DWA().state_dict()
    state["_extra_state"] = {"sum": None}

    with pytest.raises(ValueError, match="The state of DWA must be the dict of its"):
        DWA().load_state_dict(state)


@pytest.mark.parametrize("temperature", [0.0, -2.0, float("nan"), float("inf")])
def test_temperature_must_be_a_finite_positive_number(temperature: float) -> None:
    with pytest.raises(ValueError, match=r"`temperature` must be a finite number > 0, but got"):
        DWA(temperature)


def test_temperature_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="`temperature` must be a number, but got str"):
        DWA("2")  # type: ignore[arg-type]


@given(
    vectors(positive_floats, min_size=1, max_size=5),
    vectors(positive_floats, min_size=5, max_size=5),
    st.floats(min_value=0.1, max_value=10.0),
)
def test_the_weights_are_non_negative_and_sum_to_m(
    older: torch.Tensor, newer: torch.Tensor, temperature: float
) -> None:
    newer = newer[: older.numel()]
    scalarizer = DWA(temperature)
    for losses in (older, newer):
        scalarizer(losses)
        scalarizer.step()

    _, grad = value_and_grad(scalarizer, torch.ones_like(older))

    assert (grad >= 0).all()  # a softmax entry may underflow to 0 at a low temperature
    assert grad.sum().item() == pytest.approx(older.numel(), rel=1e-12)
