"""FAMO: fast adaptive multitask optimization, with logits learned by an internal Adam."""

from __future__ import annotations

import math

import pytest
import torch

from jdoptim.scalarization import FAMO

from ._helpers import reload, value_and_grad

EPS = 1e-8


def _f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


class _ReferenceFAMO:
    """FAMO's logit update written independently: autograd's softmax backward for the gradient
    and ``torch.optim.Adam`` (single-tensor implementation) for the step."""

    def __init__(self, m: int, lr: float, weight_decay: float) -> None:
        self.w = torch.nn.Parameter(torch.zeros(m))
        self.optimizer = torch.optim.Adam([self.w], lr=lr, weight_decay=weight_decay, foreach=False)

    def update(self, before: torch.Tensor, after: torch.Tensor, closed_form: bool = False) -> None:
        delta = (before + EPS).log() - (after + EPS).log()
        if closed_form:
            # The softmax's vector-Jacobian product z (delta - z . delta), in delta's dtype.
            z = self.w.detach().softmax(0).to(delta.dtype)
            grad = (z * (delta - (z * delta).sum())).to(self.w.dtype)
        else:
            (grad,) = torch.autograd.grad(self.w.softmax(0), self.w, delta.to(self.w.dtype))
        self.w.grad = grad
        self.optimizer.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_gradient_with_equal_logits(dtype: torch.dtype) -> None:
    # z = [1/2, 1/2], D = [1, 3]: c = 1/2 + 1/6 = 2/3, gradient [3/4, 1/4].
    value, grad = value_and_grad(FAMO(2), torch.tensor([1.0, 3.0], dtype=dtype))

    tolerance = 1e-6 if dtype == torch.float32 else 1e-7
    assert value.dtype == dtype
    assert value.item() == pytest.approx(0.75 * math.log(3.0), rel=tolerance)
    assert grad.tolist() == pytest.approx([0.75, 0.25], rel=tolerance)


def test_min_losses_are_subtracted() -> None:
    scalarizer = FAMO(2, min_losses=torch.tensor([0.5, 1.0]))

    # D = [0.5, 4]: c = 1 + 1/8, z / c = 4/9 each, gradient [8/9, 1/9],
    # value 4/9 (log 0.5 + log 4) = 4/9 log 2.
    value, grad = value_and_grad(scalarizer, _f64(1.0, 5.0))

    assert value.item() == pytest.approx(4 / 9 * math.log(2.0), rel=1e-6)
    assert grad.tolist() == pytest.approx([8 / 9, 1 / 9], rel=1e-6)


def test_the_gradient_is_a_convex_combination_for_any_logits() -> None:
    scalarizer = FAMO((2, 3))
    scalarizer.logits.copy_(torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.5, -0.2]]))
    values = torch.tensor([[1.0, 0.1, 5.0], [2.0, 3.0, 0.01]], dtype=torch.float64)

    _, grad = value_and_grad(scalarizer, values)

    z = scalarizer.logits.flatten().softmax(0).double().reshape(2, 3)
    expected = (z / (values + EPS)) / (z / (values + EPS)).sum()
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)
    assert (grad > 0).all()
    assert grad.sum().item() == pytest.approx(1.0, rel=1e-12)


def test_the_epsilon_keeps_a_zero_loss_finite() -> None:
    value, grad = value_and_grad(FAMO(2), _f64(0.0, 1.0))

    assert math.isfinite(value.item())
    assert grad.tolist() == pytest.approx([1.0, 1e-8], rel=1e-6)


def test_the_first_update_moves_every_logit_by_about_lr() -> None:
    scalarizer = FAMO(3, lr=0.1)
    scalarizer(_f64(1.0, 1.0, 1.0))

    # Loss 0 decreased most: its logit goes down (it needs less weight), loss 2 did not decrease.
    scalarizer.update(_f64(0.5, 0.8, 1.0))

    # First Adam step with zero logits: -lr g / (|g| + eps), so -lr sign(g).
    delta = torch.tensor([math.log(2.0), math.log(1.25), 0.0])
    grad = (delta - delta.mean()) / 3
    assert scalarizer.logits.tolist() == pytest.approx((-0.1 * grad.sign()).tolist(), rel=1e-6)
    assert scalarizer.adam_step.item() == 1


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3, 0.5])
def test_a_trajectory_of_updates_matches_torch_adam(weight_decay: float) -> None:
    scalarizer = FAMO(3, lr=0.05, weight_decay=weight_decay)
    reference = _ReferenceFAMO(3, lr=0.05, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(0)
    losses = torch.rand(3, generator=generator, dtype=torch.float64) + 0.5

    for _ in range(12):
        _, grad = value_and_grad(scalarizer, losses)
        z = reference.w.detach().softmax(0).double()
        expected_grad = (z / (losses + EPS)) / (z / (losses + EPS)).sum()
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=0)
        after = losses * (1 - 0.2 * torch.rand(3, generator=generator, dtype=torch.float64))
        scalarizer.update(after)
        reference.update(losses, after)
        # Autograd's softmax backward rounds differently from the closed form.
        torch.testing.assert_close(scalarizer.logits, reference.w.detach(), rtol=0, atol=1e-6)
        losses = after

    state = reference.optimizer.state[reference.w]
    torch.testing.assert_close(scalarizer.exp_avg, state["exp_avg"], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(scalarizer.exp_avg_sq, state["exp_avg_sq"], rtol=1e-4, atol=1e-12)
    assert scalarizer.adam_step.item() == 12


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_logit_step_is_bit_for_bit_torch_adam(weight_decay: float, dtype: torch.dtype) -> None:
    scalarizer = FAMO(4, lr=0.05, weight_decay=weight_decay)
    reference = _ReferenceFAMO(4, lr=0.05, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(2)
    losses = torch.rand(4, generator=generator, dtype=dtype) + 0.5

    for _ in range(30):
        scalarizer(losses)
        after = losses * (1 - 0.2 * torch.rand(4, generator=generator, dtype=dtype))
        scalarizer.update(after)
        reference.update(losses, after, closed_form=True)
        assert torch.equal(scalarizer.logits, reference.w.detach())
        losses = after

    state = reference.optimizer.state[reference.w]
    assert torch.equal(scalarizer.exp_avg, state["exp_avg"])
    assert torch.equal(scalarizer.exp_avg_sq, state["exp_avg_sq"])


def test_the_remembered_losses_are_kept_after_an_update() -> None:
    twice = FAMO(2)
    twice(_f64(1.0, 1.0))
    twice.update(_f64(0.5, 0.9))
    twice.update(_f64(0.5, 0.9))
    reference = _ReferenceFAMO(2, lr=0.025, weight_decay=1e-3)
    reference.update(_f64(1.0, 1.0), _f64(0.5, 0.9), closed_form=True)
    reference.update(_f64(1.0, 1.0), _f64(0.5, 0.9), closed_form=True)

    assert torch.equal(twice.logits, reference.w.detach())


def test_update_accepts_values_that_require_grad() -> None:
    scalarizer = FAMO(2)
    scalarizer(_f64(1.0, 1.0))

    scalarizer.update(_f64(0.5, 1.0).requires_grad_(True))

    assert not scalarizer.logits.requires_grad
    assert scalarizer.logits[0] < 0 < scalarizer.logits[1]


def _state(scalarizer: FAMO) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in scalarizer.named_buffers()}


@pytest.mark.parametrize(
    "after",
    [
        [float("inf"), 1.0],
        [float("nan"), 1.0],
        [-1.0, 1.0],  # below the lower bound: log of a negative number
    ],
)
def test_update_refuses_non_finite_decreases_and_leaves_the_state_unchanged(
    after: list[float],
) -> None:
    scalarizer = FAMO(2)
    scalarizer(_f64(1.0, 2.0))
    scalarizer.update(_f64(0.9, 1.5))
    saved = _state(scalarizer)

    with pytest.raises(ValueError, match="the decrease of the log-losses is not finite"):
        scalarizer.update(_f64(*after))

    for name, buffer in scalarizer.named_buffers():
        assert torch.equal(buffer, saved[name]), name


def test_non_finite_remembered_losses_make_update_refuse() -> None:
    scalarizer = FAMO(2)
    assert scalarizer(_f64(float("inf"), 1.0)).item() == float("inf")

    with pytest.raises(ValueError, match="not finite"):
        scalarizer.update(_f64(1.0, 1.0))
    assert torch.equal(scalarizer.logits, torch.zeros(2))


def test_update_before_any_call_raises() -> None:
    with pytest.raises(ValueError, match="call the scalarizer first"):
        FAMO(2).update(_f64(1.0, 1.0))


def test_update_with_values_of_another_shape_raises() -> None:
    scalarizer = FAMO(2)
    scalarizer(_f64(1.0, 1.0))

    with pytest.raises(ValueError, match=r"`logits`, \(2,\), but got shape \(1, 2\)"):
        scalarizer.update(torch.ones(1, 2))


def test_update_with_values_that_are_not_a_tensor_raises_a_type_error() -> None:
    scalarizer = FAMO(2)
    scalarizer(_f64(1.0, 1.0))

    with pytest.raises(TypeError, match=r"`values` must be a torch\.Tensor, but got list"):
        scalarizer.update([1.0, 1.0])  # type: ignore[arg-type]


def test_reset_restores_the_fresh_state_and_forgets_the_remembered_losses() -> None:
    scalarizer = FAMO(2, min_losses=torch.tensor([0.1, 0.2]))
    for _ in range(3):
        scalarizer(_f64(1.0, 2.0))
        scalarizer.update(_f64(0.5, 1.9))

    scalarizer.reset()

    fresh = FAMO(2, min_losses=torch.tensor([0.1, 0.2]))
    for name, buffer in fresh.named_buffers():
        assert torch.equal(getattr(scalarizer, name), buffer), name
    assert scalarizer.state_dict()["_extra_state"] == {"before": None}
    with pytest.raises(ValueError, match="call the scalarizer first"):
        scalarizer.update(_f64(1.0, 1.0))


def _trajectory(scalarizer: FAMO, steps: range, interrupt_at: int | None = None) -> list[object]:
    """Alternates calls and updates on a fixed sequence of losses; reloads the scalarizer into a
    fresh instance between the call and the update of step ``interrupt_at``."""
    generator = torch.Generator().manual_seed(1)
    sequence = [torch.rand(2, 2, generator=generator) + 0.1 for _ in range(2 * len(steps))]
    records: list[object] = []
    for step in steps:
        records.append(value_and_grad(scalarizer, sequence[2 * step]))
        if step == interrupt_at:
            fresh = FAMO((2, 2), min_losses=torch.full((2, 2), 0.05), lr=0.1, weight_decay=0.01)
            scalarizer = reload(scalarizer, fresh)  # type: ignore[assignment]
        scalarizer.update(sequence[2 * step + 1])
        records.append(scalarizer.logits.clone())
    return records


@pytest.mark.parametrize("interrupt_at", [0, 3, 7])
def test_a_reload_between_a_call_and_its_update_continues_bit_for_bit(interrupt_at: int) -> None:
    def build() -> FAMO:
        return FAMO((2, 2), min_losses=torch.full((2, 2), 0.05), lr=0.1, weight_decay=0.01)

    uninterrupted = _trajectory(build(), range(8))
    resumed = _trajectory(build(), range(8), interrupt_at)

    for expected, actual in zip(uninterrupted, resumed):
        if isinstance(expected, tuple):
            assert isinstance(actual, tuple)
            assert all(torch.equal(a, e) for a, e in zip(actual, expected))
        else:
            assert isinstance(actual, torch.Tensor)
            assert torch.equal(actual, expected)  # type: ignore[arg-type]


def test_the_state_dict_holds_every_piece_of_state() -> None:
    scalarizer = FAMO(2, min_losses=torch.tensor([0.0, 0.5]))
    scalarizer(_f64(1.0, 2.0))

    state = scalarizer.state_dict()

    assert set(state) == {
        "min_losses",
        "logits",
        "exp_avg",
        "exp_avg_sq",
        "adam_step",
        "_extra_state",
    }
    assert torch.equal(state["_extra_state"]["before"], _f64(1.0, 2.0))
    assert list(scalarizer.parameters()) == []


def test_float64_values_keep_float32_logits() -> None:
    scalarizer = FAMO(2)

    assert scalarizer(_f64(1.0, 2.0)).dtype == torch.float64
    scalarizer.update(_f64(0.5, 2.0))
    assert scalarizer.logits.dtype == torch.float32


def test_a_malformed_extra_state_raises_a_value_error() -> None:
    state = FAMO(2).state_dict()
    state["_extra_state"] = {"previous": None}

    with pytest.raises(ValueError, match="The state of FAMO must be the dict of its"):
        FAMO(2).load_state_dict(state)


@pytest.mark.parametrize("name", ["lr", "weight_decay"])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_lr_and_weight_decay_must_be_finite_non_negative_numbers(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"`{name}` must be a finite number >= 0, but got"):
        FAMO(2, **{name: value})


@pytest.mark.parametrize("name", ["lr", "weight_decay"])
def test_lr_and_weight_decay_must_be_numbers(name: str) -> None:
    with pytest.raises(TypeError, match=rf"`{name}` must be a number, but got str"):
        FAMO(2, **{name: "0.1"})  # type: ignore[arg-type]


def test_min_losses_must_have_exactly_the_shape() -> None:
    with pytest.raises(ValueError, match=r"`min_losses` must have the shape \(2, 3\) given by"):
        FAMO((2, 3), min_losses=torch.zeros(6))
    with pytest.raises(TypeError, match=r"`min_losses` must be a torch\.Tensor or None, but got"):
        FAMO(2, min_losses=[0.0, 0.0])  # type: ignore[arg-type]


def test_a_bad_shape_raises() -> None:
    with pytest.raises(TypeError, match="`shape` must be an int or a sequence of ints"):
        FAMO(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`shape` must hold sizes >= 0"):
        FAMO((-1,))
