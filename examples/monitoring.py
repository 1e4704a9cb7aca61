"""Monitoring: the weights of the aggregator and the conflicts between the task gradients.

Aggregators and weightings are ``nn.Module``s called on every use, so forward hooks see what
they do. A hook on ``aggregator.gramian_weighting`` receives the Gramian ``G = J Jᵀ`` of the
task gradients (from which their cosine similarities are ``G_ij / sqrt(G_ii G_jj)``) and the
weights it returns. Without any hook, ``JacobianOptimizer.last_weights`` gives the weights of
the last step and ``JacobianOptimizer.diagnostics()`` the cosine similarities and the number of
conflicting pairs, both computed from the Gramian the aggregator already needed.

Run: ``python examples/monitoring.py --steps 50``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description="Monitor weights and gradient conflicts.")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    inputs = torch.randn(128, 8)
    # Two tasks that pull the shared model in opposite directions, and a third, unrelated one.
    targets = torch.stack([inputs[:, 0], -inputs[:, 0] + inputs[:, 1], inputs[:, 2:].sum(1)], 1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    aggregator = UPGrad()
    optimizer = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), aggregator)

    records: list[dict[str, Any]] = []

    def on_weighting(module: nn.Module, args: tuple[Tensor, ...], weights: Tensor) -> None:
        gramian = args[0]
        norms = gramian.diagonal().sqrt()
        cosine = gramian / (norms[:, None] * norms[None, :]).clamp_min(1e-12)
        n_conflicts = int((cosine.triu(diagonal=1) < 0).sum())
        records.append({"weights": weights.tolist(), "cosine": cosine, "conflicts": n_conflicts})

    handle = aggregator.gramian_weighting.register_forward_hook(on_weighting)

    for step in range(args.steps):
        prediction = model(inputs).squeeze(1)
        losses = [(prediction - targets[:, i]).pow(2).mean() for i in range(3)]
        optimizer.zero_grad()
        optimizer.step(losses)
        if step == 0 or (step + 1) % max(args.steps // 5, 1) == 0:
            record = records[-1]
            cosine = record["cosine"]
            print(
                f"step {step + 1:4d}  weights {[round(w, 3) for w in record['weights']]}  "
                f"cos(g1,g2) {cosine[0, 1].item():+.3f}  cos(g1,g3) {cosine[0, 2].item():+.3f}  "
                f"cos(g2,g3) {cosine[1, 2].item():+.3f}  conflicting pairs {record['conflicts']}"
            )
    handle.remove()

    # The same information from the optimizer, without hooks.
    (weights,) = optimizer.last_weights  # one entry per parameter group
    (diagnostics,) = optimizer.diagnostics()
    assert weights is not None and diagnostics is not None
    print(f"last weights from the optimizer: {[round(w, 3) for w in weights.tolist()]}")
    print(f"conflicting pairs from the optimizer: {diagnostics.n_conflicting_pairs}")
    return records


if __name__ == "__main__":
    main()
