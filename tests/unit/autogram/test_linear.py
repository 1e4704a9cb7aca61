"""The two forms of the Gramian of ``nn.Linear`` over sequences, chosen by their cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jdoptim.autogram._linear import _kernel_is_cheaper, linear_gramian


def _expected(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    rows, samples = delta.shape[0], x.shape[0]
    jacobian = torch.zeros(rows, samples, delta.shape[-1], x.shape[-1], dtype=torch.float64)
    for t in range(rows):
        for b in range(samples):
            for s in range(x.shape[1]):
                jacobian[t, b] += torch.outer(delta[t, b, s], x[b, s])
    matrix = jacobian.reshape(rows * samples, -1)
    return matrix @ matrix.T


@pytest.mark.parametrize(
    ("rows", "samples", "positions", "in_features", "out_features", "kernel"),
    [
        (1, 1, 8, 64, 64, True),  # wide layer, short sequence: the kernel
        (2, 2, 3, 40, 30, True),
        (1, 3, 7, 2, 3, False),  # narrow layer, long sequences: per-row gradients
        (1, 4, 3, 8, 9, False),
    ],
)
def test_both_forms_are_exact(
    rows: int, samples: int, positions: int, in_features: int, out_features: int, kernel: bool
) -> None:
    assert _kernel_is_cheaper(rows, samples, positions, in_features, out_features) is kernel
    torch.manual_seed(0)
    x = torch.randn(samples, positions, in_features, dtype=torch.float64)
    delta = torch.randn(rows, samples, positions, out_features, dtype=torch.float64)
    module = nn.Linear(in_features, out_features)
    gramian = linear_gramian(module, x, delta, {"weight"}, batched=True)
    torch.testing.assert_close(gramian, _expected(x, delta), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("rows", "samples", "positions", "in_features", "out_features"),
    [
        (1, 4, 3, 8, 9),  # per-row gradients in 3 blocks of output features
        (2, 3, 5, 4, 7),  # several rows: blocks of (b, t) rows, reordered at the end
        (1, 3, 4, 5, 1),  # one output feature
        (2, 2, 3, 40, 30),  # the kernel
        (3, 2, 1, 4, 5),  # one position
    ],
)
@pytest.mark.parametrize("names", [{"weight", "bias"}, {"bias"}, {"weight"}])
def test_weight_and_bias_add_up(
    rows: int,
    samples: int,
    positions: int,
    in_features: int,
    out_features: int,
    names: set[str],
) -> None:
    torch.manual_seed(0)
    x = torch.randn(samples, positions, in_features, dtype=torch.float64)
    delta = torch.randn(rows, samples, positions, out_features, dtype=torch.float64)
    module = nn.Linear(in_features, out_features)
    expected = torch.zeros(rows * samples, rows * samples, dtype=torch.float64)
    if "weight" in names:
        expected += _expected(x, delta)
    if "bias" in names:
        bias = delta.sum(dim=2).reshape(rows * samples, -1)
        expected += bias @ bias.T
    gramian = linear_gramian(module, x, delta, names, batched=True)
    torch.testing.assert_close(gramian, expected, rtol=1e-10, atol=1e-12)


def test_the_choice_follows_the_count_of_products() -> None:
    # 16 sequences of 16 tokens through a 64 x 64 layer: the kernel costs (256²)(64 + 64) =
    # 8.4M products, the per-row gradients 16·64·64·(16 + 16) = 2.1M.
    assert not _kernel_is_cheaper(1, 16, 16, 64, 64)
    # One sequence of 8 tokens through a 256 x 256 layer: 64·512 = 33k products for the
    # kernel, 256²·9 = 590k for the per-row gradient.
    assert _kernel_is_cheaper(1, 1, 8, 256, 256)
