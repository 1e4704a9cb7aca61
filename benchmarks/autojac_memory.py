"""Peak memory of ``autojac.backward`` (+ ``jac_to_grad``) against the Jacobian's own size.

Workload: m = 32 losses on an MLP of about 1M parameters (the 4×512 trunk of the performance suite:
``384 → 512 → 512 → 512 → 512 → 32``, 1,001,504 parameters), batch 64, loss i = the mean squared
error of output i. The Jacobian then holds 32 × 1,001,504 float32 = 128.2 MB.

Each configuration runs in its own subprocess. There, after a warm-up run (lazy initialisation,
thread pools, vmap set-up), the resident set size (RSS) is read, its high-water mark is reset
(``/proc/self/clear_refs``), the configuration runs once from the forward pass, and the growth of
the high-water mark over the RSS before is its peak memory. The subprocesses run with
``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB, so that glibc serves every large tensor with its own
mapping and returns it on free: the RSS then follows the live tensors (to the page), instead of
keeping freed memory in the heap. Where the high-water mark cannot be reset, ``ru_maxrss`` is
used without a warm-up (less precise).

Configurations:

- ``forward``: the forward pass, graph kept: the model's activations A (the reference for the
  summed-loss step);
- ``summed``: ``losses.sum().backward()`` (the floor);
- ``backward``, ``backward/8``, ``backward/1``: ``autojac.backward(losses)`` with
  ``parallel_chunk_size`` None (all 32 rows at once), 8 and 1;
- ``backward+jac_to_grad``, ``backward/8+jac_to_grad``: the same followed by
  ``jac_to_grad(params, Mean())``.

The ratio reported is peak / (Jacobian size + A); the target is ≤ 1.3 (the Jacobian held once).

Run ``PYTHONPATH=. python benchmarks/autojac_memory.py`` (``--json`` for machine-readable output);
other scripts call :func:`run`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

CONFIGURATIONS = (
    "forward",
    "summed",
    "backward",
    "backward/8",
    "backward/1",
    "backward+jac_to_grad",
    "backward/8+jac_to_grad",
)
BATCH = 64
WIDTH = 512
INPUT = 384


def make_mlp(losses: int) -> nn.Module:
    """The 4×512 MLP trunk with one output per loss (about 1M parameters for 32 losses)."""
    return nn.Sequential(
        nn.Linear(INPUT, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, losses),
    )


def _step(configuration: str, model: nn.Module, x: Tensor, y: Tensor) -> object:
    """Runs ``configuration`` once; returns what must stay alive until the measurement."""
    from jdoptim.aggregation import Mean
    from jdoptim.autojac import backward, jac_to_grad

    losses = (model(x) - y).square().mean(dim=0)
    if configuration == "forward":
        return losses
    if configuration == "summed":
        losses.sum().backward()
        return None
    name, _, then = configuration.partition("+")
    chunk = int(name.split("/")[1]) if "/" in name else None
    backward(losses, parallel_chunk_size=chunk)
    if then == "jac_to_grad":
        jac_to_grad(model.parameters(), Mean())
    return None


def _reset(model: nn.Module) -> None:
    for param in model.parameters():
        param.grad = None
        if hasattr(param, "jac"):
            del param.jac


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _child(configuration: str, losses: int) -> dict[str, float]:
    """Measures one configuration in this (fresh) process; sizes in MB (10⁶ bytes)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = make_mlp(losses)
    x, y = torch.randn(BATCH, INPUT), torch.randn(BATCH, losses)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        resettable = True
    except OSError:
        resettable = False
    if resettable:
        _step(configuration, model, x, y)
        _reset(model)
    gc.collect()
    if resettable:
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        alive = _step(configuration, model, x, y)
        peak = _status_kb("VmHWM")
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        alive = _step(configuration, model, x, y)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del alive
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "peak_mb": (peak - before) * 1024 / 1e6,
        "jacobian_mb": losses * n_params * 4 / 1e6,
        "parameters": float(n_params),
        "resettable": float(resettable),
    }


def run(losses: int = 32) -> dict[str, dict[str, float]]:
    """Measures every configuration, each in its own subprocess; returns sizes and ratios."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    results: dict[str, dict[str, float]] = {}
    for configuration in CONFIGURATIONS:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", configuration, "--losses", str(losses)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        results[configuration] = json.loads(completed.stdout.strip().splitlines()[-1])
    activations = results["forward"]["peak_mb"]
    for configuration, result in results.items():
        reference = activations if configuration in ("forward", "summed") else 0.0
        if not reference:
            reference = result["jacobian_mb"] + activations
        result["reference_mb"] = reference
        result["ratio"] = result["peak_mb"] / reference
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--child", choices=CONFIGURATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.losses)))
        return
    results = run(args.losses)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    first = next(iter(results.values()))
    print(
        f"m = {args.losses} losses, {int(first['parameters']):,} parameters, batch {BATCH}; "
        f"Jacobian {first['jacobian_mb']:.1f} MB; activations A = "
        f"{results['forward']['peak_mb']:.1f} MB"
    )
    print(f"{'configuration':<24}{'peak MB':>10}{'reference MB':>14}{'ratio':>8}")
    for configuration, result in results.items():
        reference = "A" if configuration in ("forward", "summed") else "J + A"
        print(
            f"{configuration:<24}{result['peak_mb']:>10.1f}"
            f"{result['reference_mb']:>10.1f} {reference:<5}{result['ratio']:>6.2f}"
        )


if __name__ == "__main__":
    main()
