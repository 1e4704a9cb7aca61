"""The fingerprint of recorded outputs: slice sums, whatever the layout of the output."""

from __future__ import annotations

import pytest
import torch

from jdoptim.autogram._module_hooks import slice_sums


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(24.0).reshape(2, 3, 4).transpose(0, 1) - 7.0,  # non-contiguous
        torch.arange(6.0).reshape(3, 2) - 2.0,
        torch.tensor([1.0, -2.0, 3.0]),  # one value per slice
        torch.tensor(-5.0),  # a scalar: one slice
    ],
)
def test_slice_sums_are_those_of_the_flattened_slices(tensor: torch.Tensor) -> None:
    flat = tensor.reshape(tensor.shape[0] if tensor.dim() else 1, -1)
    sums, magnitudes = slice_sums(tensor)
    assert torch.equal(sums, flat.sum(dim=1))
    assert torch.equal(magnitudes, flat.abs().sum(dim=1))


def test_slice_sums_of_half_precision_are_taken_in_float32() -> None:
    tensor = torch.full((2, 4096), 60000.0, dtype=torch.float16)
    sums, magnitudes = slice_sums(tensor)
    assert sums.dtype == torch.float32
    assert torch.equal(sums, torch.full((2,), 4096 * 60000.0))
    assert torch.equal(magnitudes, sums)
