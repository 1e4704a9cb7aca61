"""The toy's figures: trajectories on the loss contours (parameter space) and in loss space."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .toy import STARTS, ParetoSet, ToyRun, losses

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _grid(runs: list[ToyRun], columns: int) -> tuple[object, list[object]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(runs) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.6 * columns, 2.5 * rows + 0.4), layout="constrained"
    )
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax in flat[len(runs) :]:
        ax.axis("off")
    return figure, flat


def parameter_space(runs: list[ToyRun], front: ParetoSet, path: Path, columns: int = 6) -> Path:
    figure, axes = _grid(runs, columns)
    axis = torch.linspace(-10.0, 10.0, 201)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1)
    total = losses(grid).sum(dim=-1)
    for ax, run in zip(axes, runs):
        ax.contour(axis, axis, total, levels=18, cmap="Greys", linewidths=0.5)  # type: ignore[attr-defined]
        ax.plot(front.points[:, 0], front.points[:, 1], ",", color="gold")  # type: ignore[attr-defined]
        for k in range(len(STARTS)):
            path_k = run.trajectory[:, k]
            ax.plot(path_k[:, 0], path_k[:, 1], color=COLOURS[k], lw=1.2)  # type: ignore[attr-defined]
            ax.plot(*path_k[0].tolist(), "o", color=COLOURS[k], ms=3)  # type: ignore[attr-defined]
            ax.plot(*path_k[-1].tolist(), "*", color="black", ms=6)  # type: ignore[attr-defined]
        ax.set_title(run.name, fontsize=9)  # type: ignore[attr-defined]
        ax.set_xlim(-10, 10)  # type: ignore[attr-defined]
        ax.set_ylim(-10, 10)  # type: ignore[attr-defined]
        ax.set_xticks([])  # type: ignore[attr-defined]
        ax.set_yticks([])  # type: ignore[attr-defined]
    figure.suptitle(  # type: ignore[attr-defined]
        "Toy problem, parameter space: contours of L1 + L2, Pareto set (gold), "
        "five starts (dots), end points (stars)",
        fontsize=11,
    )
    figure.savefig(path, dpi=90)  # type: ignore[attr-defined]
    return path


def loss_space(runs: list[ToyRun], front: ParetoSet, path: Path, columns: int = 6) -> Path:
    figure, axes = _grid(runs, columns)
    for ax, run in zip(axes, runs):
        ax.plot(front.values[:, 0], front.values[:, 1], "-", color="gold", lw=2.5)  # type: ignore[attr-defined]
        for k in range(len(STARTS)):
            path_k = run.loss_trajectory[:, k]
            ax.plot(path_k[:, 0], path_k[:, 1], color=COLOURS[k], lw=1.2)  # type: ignore[attr-defined]
            ax.plot(*path_k[0].tolist(), "o", color=COLOURS[k], ms=3)  # type: ignore[attr-defined]
            ax.plot(*path_k[-1].tolist(), "*", color="black", ms=6)  # type: ignore[attr-defined]
        ax.set_title(run.name, fontsize=9)  # type: ignore[attr-defined]
        ax.set_xlim(-2.3, 1.2)  # type: ignore[attr-defined]
        ax.set_ylim(-22, 12)  # type: ignore[attr-defined]
        ax.tick_params(labelsize=7)  # type: ignore[attr-defined]
    figure.suptitle(  # type: ignore[attr-defined]
        "Toy problem, loss space (x: L1 = 0.1 f1, y: L2 = f2): Pareto front (gold)",
        fontsize=11,
    )
    figure.savefig(path, dpi=90)  # type: ignore[attr-defined]
    return path
