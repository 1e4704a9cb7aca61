"""Mixed precision: autocast and GradScaler with Jacobian descent.

The losses are computed under ``torch.autocast`` (bfloat16 or float16, on CPU or CUDA) and scaled
by a ``torch.amp.GradScaler``. With ``JacobianOptimizer``, ``opt.backward(scaler.scale(losses))``
replaces ``scaler.scale(loss).backward()`` and ``scaler.step(opt)`` works as usual: the scaler
unscales the aggregated gradients, and skips the step (lowering its scale) when the Jacobian
overflowed. The low-level variant does the same with ``autojac.backward`` and ``jac_to_grad``.
Aggregators compute in float32 whatever the dtype of the Jacobian.

Run: ``python examples/mixed_precision.py --dtype bfloat16 --steps 100``.
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad
from jdoptim.autojac import backward, jac_to_grad


def make_problem(device: str) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2)).to(device)
    inputs = torch.randn(128, 16, device=device)
    targets = torch.stack([inputs[:, :8].sum(dim=1), inputs[:, 8:].abs().sum(dim=1)], dim=1)
    return model, inputs, targets


def compute_losses(
    model: nn.Module, inputs: Tensor, targets: Tensor, device: str, dtype: torch.dtype
) -> list[Tensor]:
    with torch.autocast(device_type=device, dtype=dtype):
        outputs = model(inputs)  # computed in low precision
    outputs = outputs.float()
    return [(outputs[:, i] - targets[:, i]).pow(2).mean() for i in range(2)]


def train_with_optimizer(steps: int, device: str, dtype: torch.dtype) -> list[list[float]]:
    model, inputs, targets = make_problem(device)
    optimizer = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), UPGrad())
    scaler = torch.amp.GradScaler(device)
    history = []
    for _ in range(steps):
        losses = compute_losses(model, inputs, targets, device, dtype)
        optimizer.zero_grad()
        optimizer.backward(scaler.scale(losses))  # Jacobian of the scaled losses, aggregated
        scaler.step(optimizer)  # unscales .grad; skips the step if it is not finite
        scaler.update()
        history.append([loss.item() for loss in losses])
    return history


def train_low_level(steps: int, device: str, dtype: torch.dtype) -> list[list[float]]:
    model, inputs, targets = make_problem(device)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    aggregator = UPGrad()
    scaler = torch.amp.GradScaler(device)
    history = []
    for _ in range(steps):
        losses = compute_losses(model, inputs, targets, device, dtype)
        optimizer.zero_grad()
        backward(scaler.scale(losses))
        jac_to_grad(params, aggregator)
        scaler.step(optimizer)
        scaler.update()
        history.append([loss.item() for loss in losses])
    return history


def main(argv: list[str] | None = None) -> dict[str, list[list[float]]]:
    parser = argparse.ArgumentParser(description="Jacobian descent under autocast + GradScaler.")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)

    results = {
        "JacobianOptimizer": train_with_optimizer(args.steps, args.device, dtype),
        "autojac + jac_to_grad": train_low_level(args.steps, args.device, dtype),
    }
    for name, history in results.items():
        first, last = history[0], history[-1]
        print(
            f"{name:22s} ({args.dtype} on {args.device})  task 1: {first[0]:.3f} -> {last[0]:.3f}"
            f"   task 2: {first[1]:.3f} -> {last[1]:.3f}"
        )
    return results


if __name__ == "__main__":
    main()
