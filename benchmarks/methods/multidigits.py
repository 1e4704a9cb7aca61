"""MultiDigits: two of scikit-learn's 8×8 digits overlaid on a 12×12 canvas, one task per digit.

The left digit sits at (0, 0), the right one at (4, 4); where they overlap the canvas keeps the
brighter pixel. The 1,797 images are split once into training (70 %) and test images, and pairs
are drawn within each side, so no test pair shares an image with training. The model is an MLP
trunk (144 → 128 → 64, ReLU) with one linear head per task, trained with Adam through
``JacobianOptimizer`` in multi-task mode (the aggregator sees the Jacobian of the losses with
respect to the trunk's parameters; each head gets its own gradient).

Variants (``VARIANTS``):

- ``plain``: classify the left digit and the right digit (cross-entropy each);
- ``scale s`` (s = 1, 10, 100): plus a regression head predicting ``s × left digit`` with the mean
  squared error. The head's output is multiplied by ``s`` (so that the task is equally easy to
  learn whatever ``s``): its loss grows with ``s²`` and its gradient with ``s``, pure loss-scale
  imbalance. Its accuracy counts ``round(prediction / s)`` equal to the digit;
- ``conflict``: two yes/no questions about the left digit answered by one shared output (a
  single logit, binary cross-entropy each): "is it at least 5?" and "is it at most 4, or a 9?".
  The targets disagree on every digit but 9 (correlation -0.82), so on nine pairs in ten the
  two losses pull the same output in opposite directions, and since the output is one number
  no head can serve both: the conflict reaches the trunk, whose parameters get opposite
  gradients (cosine about -0.7; measured at every fifth step). The mean of the two losses
  still has something to learn (recognise the 9s, on which both agree), and a method can only
  trade one task's accuracy for the other's (they sum to at most 110 %). The earlier design,
  "left" and "9 - left" on a shared 10-way head, let the head give classes a and 9 - a equal
  rows: the two tasks then disagreed only inside the head, and the trunk saw a cosine of
  about -0.04.

The cosine between the task gradients is measured with respect to the trunk's parameters (what
the aggregator sees in multi-task mode) and, for reference, with respect to the trunk's output.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import Aggregator
from jdoptim.scalarization import DWA, FAMO, Scalarizer

Method = Aggregator | Scalarizer

VARIANTS = ("plain", "scale 1", "scale 10", "scale 100", "conflict")


@dataclass
class Data:
    train_x: Tensor
    train_y: Tensor  # [n, 2]: left and right digits
    test_x: Tensor
    test_y: Tensor


def _canvas(images: Tensor, left: Tensor, right: Tensor) -> Tensor:
    canvas = torch.zeros(len(left), 12, 12)
    canvas[:, 0:8, 0:8] = images[left]
    canvas[:, 4:12, 4:12] = torch.maximum(canvas[:, 4:12, 4:12], images[right])
    return canvas.reshape(len(left), 144)


def make_data(train_pairs: int = 4000, test_pairs: int = 2000) -> Data:
    """Pairs of digits, with the image split fixed (seed 0) whatever the run's seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    cut = int(0.7 * len(images))
    splits = []
    for pool, count in ((order[:cut], train_pairs), (order[cut:], test_pairs)):
        left = pool[torch.randint(len(pool), (count,), generator=generator)]
        right = pool[torch.randint(len(pool), (count,), generator=generator)]
        splits.append((_canvas(images, left, right), torch.stack([labels[left], labels[right]], 1)))
    return Data(splits[0][0], splits[0][1], splits[1][0], splits[1][1])


class Model(nn.Module):
    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.trunk = nn.Sequential(nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.left = nn.Linear(64, 10)
        self.right = nn.Linear(64, 10)
        self.regression = nn.Linear(64, 1)
        self.shared = nn.Linear(64, 1)

    def scale(self) -> float:
        return float(self.variant.split()[1]) if self.variant.startswith("scale") else 0.0

    def losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.trunk(x)
        left = self.left(features)
        if self.variant == "conflict":
            logit = self.shared(features)[:, 0]
            first, second = conflict_targets(y[:, 0])
            return features, [
                F.binary_cross_entropy_with_logits(logit, first),
                F.binary_cross_entropy_with_logits(logit, second),
            ]
        losses = [F.cross_entropy(left, y[:, 0]), F.cross_entropy(self.right(features), y[:, 1])]
        if self.variant.startswith("scale"):
            target = self.scale() * y[:, 0].float()
            prediction = self.scale() * self.regression(features)[:, 0]
            losses.append(F.mse_loss(prediction, target))
        return features, losses

    @torch.no_grad()
    def accuracies(self, x: Tensor, y: Tensor) -> list[float]:
        features = self.trunk(x)
        left = self.left(features).argmax(1)
        if self.variant == "conflict":
            said = (self.shared(features)[:, 0] > 0).float()
            return [float((said == target).float().mean()) for target in conflict_targets(y[:, 0])]
        accuracies = [
            float((left == y[:, 0]).float().mean()),
            float((self.right(features).argmax(1) == y[:, 1]).float().mean()),
        ]
        if self.variant.startswith("scale"):
            predicted = self.regression(features)[:, 0].round()
            accuracies.append(float((predicted == y[:, 0].float()).float().mean()))
        return accuracies


def conflict_targets(digit: Tensor) -> tuple[Tensor, Tensor]:
    """The conflict variant's two yes/no targets of the left digit: "is it at least 5?" and "is
    it at most 4, or a 9?". They disagree on every digit but 9 (correlation -0.82)."""
    first = digit >= 5
    second = (digit <= 4) | (digit == 9)
    return first.float(), second.float()


def task_names(variant: str) -> list[str]:
    if variant == "conflict":
        return ["left >= 5", "left <= 4 or 9"]
    if variant.startswith("scale"):
        return ["left", "right", "s x left"]
    return ["left", "right"]


def n_tasks(variant: str) -> int:
    return len(task_names(variant))


def _famo_closure(
    optimizer: JacobianOptimizer, model: Model, first: Tensor, x: Tensor, y: Tensor
) -> Callable[[], Tensor]:
    """The closure of a FAMO step: its first evaluation is the forward pass already done; the
    optimizer's re-evaluation after the step (for ``FAMO.update``) recomputes the losses."""
    pending = [first]

    def closure() -> Tensor:
        if pending:
            return pending.pop()
        optimizer.zero_grad()
        return torch.stack(model.losses(x, y)[1])

    return closure


@dataclass
class DigitsRun:
    accuracies: list[float]
    seconds_per_step: float
    mean_cosine: float  # between the task gradients w.r.t. the trunk's parameters, over the run
    late_cosine: float  # the same over the second half of the run
    negative_cosine_share: float  # steps with a negative cosine (some pair, for 3 tasks)
    feature_cosine: float  # the mean cosine w.r.t. the trunk's output


def _pairwise_cosines(rows: list[Tensor]) -> Tensor:
    jacobian = torch.stack(rows)
    unit = jacobian / jacobian.norm(dim=1, keepdim=True).clamp(min=1e-30)
    cosines = unit @ unit.T
    mask = torch.triu(torch.ones_like(cosines, dtype=torch.bool), diagonal=1)
    pairs: Tensor = cosines[mask]
    return pairs


def _cosines(model: Model, features: Tensor, losses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Cosines between the task gradients (each pair) with respect to the trunk's parameters
    (what the aggregator sees in multi-task mode) and with respect to the trunk's output."""
    trunk = list(model.trunk.parameters())
    at_parameters, at_features = [], []
    for loss in losses:
        *grads, feature_grad = torch.autograd.grad(loss, [*trunk, features], retain_graph=True)
        at_parameters.append(torch.cat([g.flatten() for g in grads]))
        at_features.append(feature_grad.flatten())
    return _pairwise_cosines(at_parameters), _pairwise_cosines(at_features)


def train(
    variant: str,
    factory: Callable[[], Method],
    data: Data,
    seed: int,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    measure_every: int = 5,
    normalise: bool = False,
) -> DigitsRun:
    """Trains one model through ``JacobianOptimizer``: an aggregator in multi-task mode, a
    scalarizer in scalarizer mode (stepped with a closure, so that FAMO is updated with the
    batch's losses after the step; DWA's epoch ends every pass over the training pairs).
    ``normalise`` divides each loss by its value at the first step (a constant): the user-side
    remedy for losses of different scales."""
    torch.manual_seed(seed)
    model = Model(variant)
    method = factory()
    adam = torch.optim.Adam(model.parameters(), lr=lr)
    scalarizing = isinstance(method, Scalarizer)
    optimizer = (
        JacobianOptimizer(adam, scalarizer=method)
        if isinstance(method, Scalarizer)
        else JacobianOptimizer(adam, method)
    )
    epoch = max(len(data.train_x) // batch_size, 1)
    generator = torch.Generator().manual_seed(1000 + seed)
    cosines: list[Tensor] = []
    feature_cosines: list[Tensor] = []
    elapsed = 0.0
    initial: list[Tensor] | None = None
    for step in range(steps):
        index = torch.randint(len(data.train_x), (batch_size,), generator=generator)
        start = time.perf_counter()
        x, y = data.train_x[index], data.train_y[index]
        features, losses = model.losses(x, y)
        if normalise:
            initial = initial or [loss.detach() for loss in losses]
            losses = [loss / first for loss, first in zip(losses, initial, strict=True)]
        if step % measure_every == 0:
            measure_start = time.perf_counter()
            at_parameters, at_features = _cosines(model, features, losses)
            cosines.append(at_parameters)
            feature_cosines.append(at_features)
            start += time.perf_counter() - measure_start
        optimizer.zero_grad()
        if not scalarizing:
            optimizer.step(losses, features=features)
        elif isinstance(method, FAMO):
            optimizer.step(_famo_closure(optimizer, model, torch.stack(losses), x, y))
        else:
            optimizer.step(torch.stack(losses))
        if isinstance(method, DWA) and (step + 1) % epoch == 0:
            method.step()
        elapsed += time.perf_counter() - start
    all_cosines = torch.stack(cosines)
    return DigitsRun(
        model.accuracies(data.test_x, data.test_y),
        elapsed / steps,
        float(all_cosines.mean()),
        float(all_cosines[len(all_cosines) // 2 :].mean()),
        float((all_cosines < 0).any(dim=1).float().mean()),
        float(torch.stack(feature_cosines).mean()),
    )
