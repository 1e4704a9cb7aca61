"""Loss weighting or Jacobian descent: three ways to train one multi-task network, side by side.

Three regression tasks share a trunk; their targets have very different scales (1, 10 and 0.1),
so the plain sum of the losses is almost all task 2. The script trains the same network, from the
same initialisation and with Adam, three ways:

- ``UPGrad``: Jacobian descent, ``JacobianOptimizer(adam, UPGrad())``: the Jacobian of the three
  losses (one backward pass per loss) aggregated into an update that conflicts with no task;
- ``FAMO``: a scalarizer, ``JacobianOptimizer(adam, scalarizer=FAMO(3))``, stepped with a closure
  so that the optimizer evaluates the losses again after each step and updates FAMO's weights;
- ``UW``: uncertainty weighting, ``JacobianOptimizer(adam, scalarizer=UW(3))``: its learned
  log-variances are added to Adam automatically and learn with the model.

It prints, for each method, every task's final loss relative to its initial loss, the weights
of the last step (``optimizer.last_weights``) and the time per step. What the numbers show with
the defaults: UPGrad and UW bring every task down, whatever its scale (UW learns large weights
for the small losses of tasks 1 and 3, a small one for task 2). FAMO's weights are proportional
to its softmax weights divided by the losses, so at first almost all of the weight goes to task
3, whose loss is the smallest; its logits shift weight towards the tasks that decrease slowly by
about its learning rate per step, which over 300 steps is not yet enough for task 2. A
scalarizer step costs about one ordinary step (FAMO adds one forward pass without gradients);
a Jacobian descent step costs about one backward pass per task.

Run: ``python examples/loss_weighting.py`` (``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad
from jdoptim.scalarization import FAMO, UW

SCALES = (1.0, 10.0, 0.1)


def make_data(samples: int, features: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, features, generator=generator)
    half = features // 2
    first = torch.sin(inputs[:, :half].sum(dim=1))
    second = torch.tanh(inputs[:, half:].sum(dim=1) - inputs[:, :half].sum(dim=1))
    third = torch.cos(inputs.sum(dim=1))
    targets = torch.stack([first, second, third], dim=1)
    return inputs, targets * torch.tensor(SCALES)


def make_model(features: int, hidden: int) -> nn.Module:
    """A shared trunk and one linear head per task (the three outputs)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, len(SCALES)),
    )


def task_losses(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """The mean squared error of each task: a vector of 3 positive losses."""
    return ((model(inputs) - targets) ** 2).mean(dim=0)


def make_optimizer(method: str, model: nn.Module, lr: float) -> JacobianOptimizer:
    adam = torch.optim.Adam(model.parameters(), lr=lr)
    if method == "UPGrad":
        return JacobianOptimizer(adam, UPGrad())
    if method == "FAMO":
        return JacobianOptimizer(adam, scalarizer=FAMO(len(SCALES)))
    return JacobianOptimizer(adam, scalarizer=UW(len(SCALES)))


def train(
    method: str, steps: int, inputs: Tensor, targets: Tensor, hidden: int, lr: float
) -> tuple[list[list[float]], JacobianOptimizer, float]:
    """The task losses before each step, the optimizer and the mean time of a step (ms)."""
    model = make_model(inputs.shape[1], hidden)
    optimizer = make_optimizer(method, model, lr)
    history: list[list[float]] = []

    def closure() -> Tensor:
        optimizer.zero_grad()
        return task_losses(model, inputs, targets)

    step: Callable[[], object]
    if method == "FAMO":
        # With a closure, the optimizer re-evaluates the losses after the step (under
        # torch.no_grad()) and passes them to FAMO.update.
        def step() -> object:
            return optimizer.step(closure)

    else:

        def step() -> object:
            losses = closure()
            optimizer.step(losses)
            return losses

    start = time.perf_counter()
    for _ in range(steps):
        history.append(task_losses(model, inputs, targets).detach().tolist())
        step()
    elapsed_ms = (time.perf_counter() - start) * 1e3 / max(steps, 1)
    history.append(task_losses(model, inputs, targets).detach().tolist())
    return history, optimizer, elapsed_ms


def main(argv: list[str] | None = None) -> dict[str, list[list[float]]]:
    parser = argparse.ArgumentParser(description="Loss weighting and Jacobian descent.")
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps")
    parser.add_argument("--samples", type=int, default=256, help="training samples")
    parser.add_argument("--features", type=int, default=8, help="input features")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    args = parser.parse_args(argv)

    inputs, targets = make_data(args.samples, args.features)
    histories: dict[str, list[list[float]]] = {}
    print(f"{'method':<8} | {'final / initial loss of each task':<34} | {'last weights':<24} | ms")
    for method in ("UPGrad", "FAMO", "UW"):
        history, optimizer, elapsed_ms = train(
            method, args.steps, inputs, targets, args.hidden, args.lr
        )
        histories[method] = history
        ratios = [last / first for first, last in zip(history[0], history[-1], strict=True)]
        weights = optimizer.last_weights[0]
        shown = "-" if weights is None else " ".join(f"{w:.3f}" for w in weights.tolist())
        print(
            f"{method:<8} | {' '.join(f'{r:>10.4f}' for r in ratios):<34} | {shown:<24} | "
            f"{elapsed_ms:.2f}"
        )
        if method == "UW":
            assert isinstance(optimizer.scalarizer, UW)
            log_var = optimizer.scalarizer.log_var.detach()
            print(f"UW log-variances: {[round(s, 3) for s in log_var.tolist()]}")
    return histories


if __name__ == "__main__":
    main()
