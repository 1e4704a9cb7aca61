"""Real data: multi-task learning on scikit-learn's digits, with Mean and with UPGrad.

The 1797 8×8 images of handwritten digits shipped with scikit-learn (no download) give three
tasks on the same inputs: the digit (10 classes), its parity, and whether it is at least 5.
A shared trunk feeds one head per task. The same network is trained twice from the same
initialisation through ``JacobianOptimizer`` in MTL mode, once with ``Mean`` (the gradient of
the mean loss) and once with ``UPGrad``, and the per-task test accuracies are printed.

Run: ``python examples/digits.py`` (about 30 epochs, well under a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import Aggregator, Mean, UPGrad

TASKS = ("digit", "parity", "digit >= 5")


def load_data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inputs scaled to [0, 1] and the three label columns, split 80/20."""
    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    digit = torch.tensor(digits.target, dtype=torch.long)
    labels = torch.stack([digit, digit % 2, (digit >= 5).long()], dim=1)
    x_train, x_test, y_train, y_test = train_test_split(
        inputs, labels, test_size=0.2, random_state=seed, stratify=digit
    )
    return x_train, x_test, y_train, y_test


class MultiTaskNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(32, 10), nn.Linear(32, 2), nn.Linear(32, 2)])

    def forward(self, inputs: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.trunk(inputs)
        return features, [head(features) for head in self.heads]


def train(
    aggregator: Aggregator, data: tuple[Tensor, Tensor, Tensor, Tensor], epochs: int, seed: int
) -> tuple[list[float], float]:
    """Trains from a seeded initialisation.

    Returns the test accuracy of each task and the fraction of steps in which the gradients of
    two tasks with respect to the trunk conflicted (negative inner product).
    """
    x_train, x_test, y_train, y_test = data
    torch.manual_seed(seed)
    model = MultiTaskNet()
    optimizer = JacobianOptimizer(torch.optim.Adam(model.parameters(), lr=3e-3), aggregator)
    generator = torch.Generator().manual_seed(seed)

    n_steps, n_conflicting_steps = 0, 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            features, logits = model(x_train[batch])
            losses = [cross_entropy(out, y_train[batch, t]) for t, out in enumerate(logits)]
            optimizer.zero_grad()
            optimizer.step(losses, features=features)
            trunk_diagnostics = optimizer.diagnostics()[0]  # from the Gramian, at no extra cost
            n_steps += 1
            if trunk_diagnostics is not None and trunk_diagnostics.n_conflicting_pairs > 0:
                n_conflicting_steps += 1

    model.eval()
    with torch.no_grad():
        _, logits = model(x_test)
    accuracies = [
        (out.argmax(dim=1) == y_test[:, t]).float().mean().item() for t, out in enumerate(logits)
    ]
    return accuracies, n_conflicting_steps / max(n_steps, 1)


def main(argv: list[str] | None = None) -> dict[str, tuple[list[float], float]]:
    parser = argparse.ArgumentParser(description="Multi-task learning on the digits dataset.")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = load_data(args.seed)
    print(f"{len(data[0])} training and {len(data[1])} test images, tasks: {', '.join(TASKS)}")
    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is faster than several
    try:
        for name, aggregator in (("Mean", Mean()), ("UPGrad", UPGrad())):
            results[name] = train(aggregator, data, args.epochs, args.seed)
    finally:
        torch.set_num_threads(threads)
    header = "".join(f"{task:>12s}" for task in TASKS)
    print(f"test accuracy after {args.epochs} epochs\n{'':8s}{header}   steps with conflicts")
    for name, (accuracies, conflicting) in results.items():
        row = "".join(f"{accuracy:12.3f}" for accuracy in accuracies)
        print(f"{name:8s}{row}   {conflicting:.0%}")
    return results


if __name__ == "__main__":
    main()
