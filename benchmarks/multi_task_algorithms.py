"""Two ways of computing the multi-task Jacobian, and the optimizer's multi-task mode.

Workload: the 4×512 MLP trunk of the performance suite (64 inputs, batch 64) with ``m`` linear
heads, one mean squared error per head. Configurations, each a full training step (zero_grad,
forward, backward, SGD step):

- ``summed``: ``sum(losses).backward()`` (the floor);
- ``per-task loop``: the algorithm jdoptim uses (``autojac.mtl_backward``, then
  ``jac_to_grad(UPGrad())`` on the trunk): one backward pass per task through its own head gives
  the gradient of its loss with respect to the features, then all rows are pulled back through
  the trunk in one vectorised pass;
- ``one vmap over all heads``: the alternative, written with the public ``autojac.jac``: one
  vectorised pass of the identity over all the losses through all the heads (each row also
  traverses the heads of the other tasks, with zero gradients), then the same pass through the
  trunk;
- ``JacobianOptimizer``: ``JacobianOptimizer(SGD, UPGrad()).step(losses, features=features)``.

Times are medians of repeated steps, the configurations interleaved in a shuffled order so that
the noise of the machine hits them alike. Run ``PYTHONPATH=. python
benchmarks/multi_task_algorithms.py`` (``--threads``, ``--repeats``, ``--m 2 8 32``); the code
under test is whatever ``jdoptim`` imports, so pointing ``PYTHONPATH`` at another checkout
measures that version's optimizer with the same script.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

CONFIGURATIONS = ("summed", "per-task loop", "one vmap over all heads", "JacobianOptimizer")


class MultiHeadMLP(nn.Module):
    def __init__(self, m: int, width: int = 512, depth: int = 4, inputs: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = inputs
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(m))

    def losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.trunk(x)
        return features, [
            ((head(features)[:, 0] - y[:, i]) ** 2).mean() for i, head in enumerate(self.heads)
        ]


def make_step(
    configuration: str, m: int, x: Tensor, y: Tensor
) -> tuple[Callable[[], None], MultiHeadMLP]:
    """One step of ``configuration`` on a fresh model (returned too, to inspect its gradients)."""
    from jdoptim import JacobianOptimizer, autojac
    from jdoptim.aggregation import UPGrad

    torch.manual_seed(0)
    model = MultiHeadMLP(m)
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    shared = list(model.trunk.parameters())
    heads = list(model.heads.parameters())
    aggregator = UPGrad()

    if configuration == "summed":

        def step() -> None:
            sgd.zero_grad()
            torch.stack(model.losses(x, y)[1]).sum().backward()
            sgd.step()

    elif configuration == "per-task loop":

        def step() -> None:
            sgd.zero_grad()
            features, losses = model.losses(x, y)
            autojac.mtl_backward(losses, features=features)
            autojac.jac_to_grad(shared, aggregator)
            sgd.step()

    elif configuration == "one vmap over all heads":

        def step() -> None:
            sgd.zero_grad()
            features, losses = model.losses(x, y)
            feature_jacobian, *head_jacobians = autojac.jac(
                torch.stack(losses), [features, *heads], retain_graph=True
            )
            for param, jacobian in zip(heads, head_jacobians, strict=True):
                param.grad = jacobian.sum(dim=0)
            for param, jacobian in zip(
                shared, autojac.jac(features, shared, jac_outputs=feature_jacobian), strict=True
            ):
                param.jac = jacobian  # type: ignore[attr-defined]
            autojac.jac_to_grad(shared, aggregator)
            sgd.step()

    elif configuration == "JacobianOptimizer":
        optimizer = JacobianOptimizer(sgd, aggregator)

        def step() -> None:
            optimizer.zero_grad()
            features, losses = model.losses(x, y)
            optimizer.step(losses, features=features)

    else:
        raise ValueError(f"`configuration` must be one of {CONFIGURATIONS}, got {configuration!r}.")
    return step, model


def measure(m: int, repeats: int) -> dict[str, float]:
    """Median wall-clock milliseconds of one step of each configuration."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 64, generator=generator), torch.randn(64, m, generator=generator)
    steps = {c: make_step(c, m, x, y)[0] for c in CONFIGURATIONS}
    for step in steps.values():
        step()
        step()
    times: dict[str, list[float]] = {c: [] for c in CONFIGURATIONS}
    order = list(steps.items())
    shuffler = random.Random(0)
    for _ in range(repeats):
        shuffler.shuffle(order)
        for configuration, step in order:
            start = time.perf_counter()
            step()
            times[configuration].append(time.perf_counter() - start)
    return {c: statistics.median(values) * 1e3 for c, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--m", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'m':>3} | " + " | ".join(f"{c:>24}" for c in CONFIGURATIONS) + " | loop / vmap")
    for m in args.m:
        result = measure(m, args.repeats)
        cells = " | ".join(f"{result[c]:>21.2f} ms" for c in CONFIGURATIONS)
        ratio = result["per-task loop"] / result["one vmap over all heads"]
        print(f"{m:>3} | {cells} | {ratio:.3f}")


if __name__ == "__main__":
    main()
