"""Gramians of losses computed under ``torch.autocast`` and scaled as by a GradScaler.

Every closed form (``nn.Linear``, plain convolutions) and the replay of the other layers must
compute in the dtypes of the forward pass, and accumulate the Gramian in float32: the Gramian
of losses scaled by 65536 is far above float16's maximum (65504).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _explicit_gramian import explicit_jacobian, trainable
from torch import Tensor, nn

from jdoptim.autogram import Engine

SCALE = 65536.0  # GradScaler's initial scale

# Tolerances relative to the largest entry of the Gramian: the engine and the explicit
# reference round the half-precision gradients differently (8 bits of mantissa for bfloat16,
# 11 for float16, then float32 accumulation).
RTOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


class _SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` on one sequence per sample, its output as the output."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(6, 2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


def _layers() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
    """Each hooked layer kind: a builder and the shape of one batch of inputs."""
    return {
        "Linear": (lambda: nn.Linear(5, 4), (3, 5)),
        "Linear-positions": (lambda: nn.Linear(5, 4), (3, 6, 5)),
        "Linear-many-positions": (lambda: nn.Linear(2, 2), (3, 7, 2)),
        "Linear-no-bias": (lambda: nn.Linear(5, 4, bias=False), (3, 5)),
        "Conv1d": (lambda: nn.Conv1d(2, 3, 3, stride=2), (3, 2, 9)),
        "Conv2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), (3, 2, 5, 5)),
        "Conv3d": (lambda: nn.Conv3d(2, 2, 2), (3, 2, 3, 3, 3)),
        "Conv2d-grouped": (lambda: nn.Conv2d(2, 4, 3, groups=2), (3, 2, 5, 5)),
        "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 2), (3, 2, 4, 4)),
        "LayerNorm": (lambda: nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4)), (3, 5)),
        "GroupNorm": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4)), (3, 2, 6)),
        "BatchNorm-eval": (
            lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)).eval(),
            (3, 2, 5, 5),
        ),
        "Attention": (lambda: _SelfAttention(), (3, 4, 6)),
        "Bilinear-free": (
            lambda: nn.Sequential(nn.Linear(5, 6), nn.GELU(), nn.Linear(6, 3)),
            (3, 5),
        ),
    }


LAYERS = _layers()


def _losses(model: nn.Module, x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """One loss per sample, scaled by 65536, from the model run under autocast at ``dtype``."""
    if dtype is None:
        out = model(x)
    else:
        with torch.autocast("cpu", dtype=dtype):
            out = model(x)
    # The loss itself in float32, as loss functions are under autocast. A mean, and small inputs
    # (see the tests), keep the half-precision gradients of the real backward pass finite.
    return SCALE * out.float().flatten(1).mean(dim=1)


# torch.func has no batching rule for a half-precision input with float32 statistics: the engine
# refuses the per-sample replay (with a ValueError pointing to batch_dim=None) instead.
NOT_VECTORISABLE_UNDER_AUTOCAST = {"BatchNorm-eval"}


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize("batch_dim", [0, None])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_gramian_under_autocast_is_finite_and_matches_the_explicit_one(
    layer: str, dtype: torch.dtype, batch_dim: int | None
) -> None:
    build, shape = LAYERS[layer]
    if batch_dim is not None and layer in NOT_VECTORISABLE_UNDER_AUTOCAST:
        model = build()
        engine = Engine(model, batch_dim=batch_dim)
        with pytest.raises(ValueError, match=r"sample by sample.*Use `batch_dim=None`"):
            engine.compute_gramian(_losses(model, torch.randn(*shape) / 4, dtype))
        return
    model = build()
    x = torch.randn(*shape) / 4
    engine = Engine(model, batch_dim=batch_dim)

    losses = _losses(model, x, dtype)
    gramian = engine.compute_gramian(losses)
    jacobian = explicit_jacobian(losses, trainable(model)).double()
    reference = jacobian @ jacobian.T

    assert gramian.dtype == torch.float32
    assert bool(torch.isfinite(gramian).all())
    assert bool(torch.isfinite(reference).all())  # the test's scale keeps half gradients finite
    tolerance = RTOL[dtype] * float(reference.abs().max())
    torch.testing.assert_close(gramian.double(), reference, rtol=0, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layer", ["Linear", "Conv2d"])
def test_gramian_under_autocast_is_close_to_the_float32_one(layer: str, dtype: torch.dtype) -> None:
    # Against the Gramian of the same model without autocast: half precision changes the
    # gradients by its rounding only.
    build, shape = LAYERS[layer]
    model = build()
    x = torch.randn(*shape) / 4
    engine = Engine(model, batch_dim=0)

    single = engine.compute_gramian(_losses(model, x, None))
    half = engine.compute_gramian(_losses(model, x, dtype))

    tolerance = 5 * RTOL[dtype] * float(single.abs().max())
    torch.testing.assert_close(half, single, rtol=0, atol=tolerance)


def test_compute_gramian_called_under_autocast_replays_as_recorded() -> None:
    # The forward ran in float32; compute_gramian itself runs inside an autocast block: the
    # replayed calls must not switch to half precision (their outputs would not match).
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4))
    x = torch.randn(3, 5)
    engine = Engine(model, batch_dim=None)
    losses = _losses(model, x, None)
    jacobian = explicit_jacobian(losses, trainable(model)).double()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        gramian = engine.compute_gramian(losses)

    torch.testing.assert_close(gramian.double(), jacobian @ jacobian.T, rtol=1e-5, atol=1e-3)


def test_half_precision_losses_give_a_float32_gramian() -> None:
    model = nn.Linear(3, 1).half()
    engine = Engine(model, batch_dim=0)
    losses = model(torch.randn(4, 3).half()).squeeze(1) * 256

    gramian = engine.compute_gramian(losses)

    assert gramian.dtype == torch.float32
    assert bool(torch.isfinite(gramian).all())
