"""The toy's figures: trajectories on the loss contours (parameter space) and in loss space."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

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
    for ax, run in zip(axes, runs, strict=False):
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
    for ax, run in zip(axes, runs, strict=False):
        ax.plot(front.values[:, 0], front.values[:, 1], "-", color="gold", lw=2.5)  # type: ignore[attr-defined]
        for k in range(len(STARTS)):
            path_k = run.loss_trajectory[:, k]
            ax.plot(path_k[:, 0], path_k[:, 1], color=COLOURS[k], lw=1.2)  # type: ignore[attr-defined]
            ax.plot(*path_k[0].tolist(), "o", color=COLOURS[k], ms=3)  # type: ignore[attr-defined]
            ax.plot(*path_k[-1].tolist(), "*", color="black", ms=6)  # type: ignore[attr-defined]
        ax.set_title(run.name, fontsize=9)  # type: ignore[attr-defined]
        ax.set_xlim(0.0, 3.2)  # type: ignore[attr-defined]
        ax.set_ylim(0.0, 30.0)  # type: ignore[attr-defined]
        ax.tick_params(labelsize=7)  # type: ignore[attr-defined]
    figure.suptitle(  # type: ignore[attr-defined]
        "Toy problem, loss space (x: L1 = 0.1 f1 + 2.1, y: L2 = f2 + 21): Pareto front (gold), "
        "starts (dots), end points (stars)",
        fontsize=11,
    )
    figure.savefig(path, dpi=90)  # type: ignore[attr-defined]
    return path


def digits_scales(results: dict[str, Any], path: Path) -> Path:
    """Worst digit task's test accuracy per variant, for the methods run on every variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(results)
    names = [n for n in results[variants[0]] if all(n in results[v] for v in variants)]
    figure, ax = plt.subplots(figsize=(10, 3.6), layout="constrained")
    width = 0.8 / len(names)
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        means = [100 * statistics.mean(results[v][name]["worst"]) for v in variants]
        stds = [
            100 * statistics.stdev(results[v][name]["worst"])
            if len(results[v][name]["worst"]) > 1
            else 0.0
            for v in variants
        ]
        positions = [j + (i - (len(names) - 1) / 2) * width for j in range(len(variants))]
        ax.bar(positions, means, width, yerr=stds, label=name, color=cmap(i % 10), capsize=2)
    ax.axhline(10.0, color="0.4", lw=0.8, ls="--")
    ax.text(len(variants) - 0.5, 11.5, "chance", fontsize=8, color="0.4", ha="right")
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(
        ["plain" if v == "plain" else v.replace("scale", "scale s =") for v in variants]
    )
    ax.set_ylabel("worst digit task, test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.set_title(
        "MultiDigits: a regression head with loss scale s² (mean ± std over seeds)", fontsize=10
    )
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
