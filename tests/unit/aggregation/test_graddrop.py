"""GradDrop: gradient sign dropout."""

from __future__ import annotations

import pytest
import torch

from jdoptim.aggregation import GradDrop, NonDifferentiableError

# Purities P = ½(1 + Σ/Σ|·|) per column: 0.6, 0.5 and 0.75.
J = torch.tensor([[-4.0, 1.0, 3.0], [6.0, -1.0, -1.0]])


def test_hand_computed_with_a_fixed_seed() -> None:
    # Seed 0 draws U = [0.4963, 0.7682, 0.0885]: P > U keeps the positive entries of columns
    # 0 and 2, P < U keeps the negative entry of column 1.
    torch.manual_seed(0)
    assert GradDrop()(J).tolist() == [6.0, -1.0, 3.0]
    # Seed 1 draws U = [0.7576, 0.2793, 0.4031]: the negative entry of column 0 is kept.
    torch.manual_seed(1)
    assert GradDrop()(J).tolist() == [-4.0, 1.0, 3.0]


def test_columns_whose_entries_share_a_sign_are_kept_entirely() -> None:
    matrix = torch.tensor([[1.0, -2.0, 0.0], [3.0, -4.0, 0.0], [0.5, 0.0, 0.0]])

    for seed in range(20):
        torch.manual_seed(seed)
        assert GradDrop()(matrix).tolist() == [4.5, -6.0, 0.0]


def test_leak_lets_dropped_entries_through_partially() -> None:
    # Seed 0 as above; row 0 leaks half of its dropped entries (-4 and 1), row 1 nothing.
    torch.manual_seed(0)
    output = GradDrop(leak=torch.tensor([0.5, 0.0]))(J)

    assert output.tolist() == [4.0, -0.5, 3.0]


def test_full_leak_is_the_sum() -> None:
    matrix = torch.randn(3, 5)

    output = GradDrop(leak=torch.ones(3))(matrix)

    torch.testing.assert_close(output, matrix.sum(dim=0))


def test_f_is_applied_to_the_purity() -> None:
    # f = 1 > U always: only the positive entries are kept.
    aggregator = GradDrop(f=torch.ones_like)

    assert aggregator(J).tolist() == [6.0, 1.0, 3.0]


def test_reproducible_under_manual_seed() -> None:
    matrix = torch.randn(4, 50)

    torch.manual_seed(3)
    first = GradDrop()(matrix)
    torch.manual_seed(3)
    second = GradDrop()(matrix)

    assert torch.equal(first, second)


def test_half_precisions_are_computed_in_float32_and_cast_back() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        torch.manual_seed(0)
        output = GradDrop()(J.to(dtype))
        assert output.dtype == dtype
        assert output.tolist() == [6.0, -1.0, 3.0]


def test_float64_is_kept() -> None:
    assert GradDrop()(J.double()).dtype == torch.float64


def test_leak_of_the_wrong_length_names_the_parameter_and_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"`leak`.*\[3\].*\[2, 3\]"):
        GradDrop(leak=torch.zeros(3))(J)


def test_constructor_validation() -> None:
    with pytest.raises(TypeError, match="`f`"):
        GradDrop(f=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`leak`"):
        GradDrop(leak=[0.0, 0.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`leak`"):
        GradDrop(leak=torch.zeros(2, 2))


def test_backward_raises_non_differentiable_error() -> None:
    matrix = J.clone().requires_grad_()

    with pytest.raises(NonDifferentiableError, match="GradDrop"):
        GradDrop()(matrix).sum().backward()


def test_repr_and_str() -> None:
    assert repr(GradDrop()) == "GradDrop(f=identity, leak=None)"
    assert repr(GradDrop(leak=torch.tensor([0.5, 0.0]))) == "GradDrop(f=identity, leak=[0.5, 0.0])"
    assert str(GradDrop()) == "GradDrop"
