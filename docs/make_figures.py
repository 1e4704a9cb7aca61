"""Renders the figures of the documentation into ``docs/_static/``.

- ``upgrad_projection.png``: two conflicting gradients, their dual cone, the projections UPGrad
  averages, and the mean for comparison.
- ``aggregators.png``: the update of every aggregator for the same two conflicting gradients
  (the aggregators, their labels and the dual cone come from the visual check
  ``tests/plots/plot_aggregators.py``; this script lays them out for the docs).

The methods benchmark's figures (``docs/guide/results/``) are rendered by
``python -m benchmarks.methods``.

Run from the repository root: ``python docs/make_figures.py`` (or ``--only aggregators``).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Polygon
from torch import Tensor

from jdoptim.aggregation import Mean, UPGrad

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "docs" / "_static"

#: Two conflicting gradients (g1 · g2 < 0) of different norms: their mean conflicts with g2.
JACOBIAN = torch.tensor([[3.0, 0.4], [-0.8, 1.0]])

GRADIENT_COLOR = "black"
UPDATE_COLOR = "tab:red"
CONE_COLOR = "tab:green"


def load_script(relative_path: str, name: str) -> ModuleType:
    """Imports a script of the repository that is not part of a package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project_on_dual_cone(gradient: Tensor, jacobian: Tensor) -> Tensor:
    """Euclidean projection of ``gradient`` on ``{x : J x >= 0}`` for a 2-D, 2-row ``J``.

    Inside the cone the gradient is its own projection; otherwise the projection lies on one
    of the two rays bounding the cone (each orthogonal to one row), whichever is closer.
    """
    if bool((jacobian @ gradient >= 0).all()):
        return gradient
    candidates: list[Tensor] = []
    for i in range(2):
        row, other = jacobian[i], jacobian[1 - i]
        ray = torch.stack([-row[1], row[0]])
        ray = ray if float(ray @ other) >= 0 else -ray
        ray = ray / ray.norm()
        candidates.append(torch.clamp(gradient @ ray, min=0.0) * ray)
    closest: Tensor = min(candidates, key=lambda p: float((gradient - p).norm()))
    return closest


def draw_cone(ax: Axes, polygon: list[tuple[float, float]]) -> None:
    if polygon:
        ax.add_patch(Polygon(polygon, closed=True, color=CONE_COLOR, alpha=0.15, lw=0))


def draw_arrow(
    ax: Axes, vector: Sequence[float], color: str, label: str | None, **style: Any
) -> None:
    arrow = {"arrowstyle": "-|>", "color": color, "lw": 2, "shrinkA": 0, "shrinkB": 0, **style}
    ax.annotate("", xy=(vector[0], vector[1]), xytext=(0, 0), arrowprops=arrow)
    if label:
        ax.text(vector[0] * 1.08, vector[1] * 1.08, label, color=color, ha="center", va="center")


def setup_axes(ax: Axes, limit: float) -> None:
    # The gradients of JACOBIAN point upwards: show the upper half-plane and a margin below.
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-0.25 * limit, 1.1 * limit)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    ax.set_xticks([])
    ax.set_yticks([])


def conflicts(jacobian: Tensor, update: Tensor) -> bool:
    """Whether ``update`` conflicts with a row, beyond the tolerance of regularised solvers."""
    norms = jacobian.norm(dim=1) * max(float(update.norm()), 1e-12)
    return bool(((jacobian @ update) / norms < -1e-2).any())


def make_upgrad_projection(path: Path) -> None:
    plots = load_script("tests/plots/plot_aggregators.py", "jdoptim_plot_aggregators")
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    setup_axes(ax, 3.4)
    draw_cone(ax, plots._dual_cone_polygon(JACOBIAN, radius=10.0))
    for i, gradient in enumerate(JACOBIAN):
        projection = project_on_dual_cone(gradient, JACOBIAN)
        ax.plot(*torch.stack([gradient, projection]).T.tolist(), ls=":", color="0.4")
        if not torch.allclose(projection, gradient):
            draw_arrow(ax, projection.tolist(), "0.4", rf"$\pi(g_{i + 1})$", ls="--", lw=1.2)
        draw_arrow(ax, gradient.tolist(), GRADIENT_COLOR, rf"$g_{i + 1}$")
    draw_arrow(ax, Mean()(JACOBIAN).tolist(), "0.6", "mean")
    draw_arrow(ax, UPGrad()(JACOBIAN).tolist(), UPDATE_COLOR, "UPGrad")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def make_aggregators(path: Path) -> None:
    plots = load_script("tests/plots/plot_aggregators.py", "jdoptim_plot_aggregators")
    # Krum is undefined for two rows (the visual check lists it as None).
    entries = [(label, aggregator) for label, aggregator in plots.aggregators() if aggregator]
    n_cols = 5
    n_rows = math.ceil(len(entries) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.4 * n_cols, 1.9 * n_rows))
    for ax, (label, aggregator) in zip(axes.flat, entries, strict=False):
        update = plots._aggregate(aggregator, JACOBIAN)  # seeds torch for the random ones
        limit = 1.15 * float(torch.cat([JACOBIAN.flatten(), update]).abs().max())
        setup_axes(ax, limit)
        draw_cone(ax, plots._dual_cone_polygon(JACOBIAN, radius=2 * limit))
        for gradient in JACOBIAN:
            draw_arrow(ax, gradient.tolist(), GRADIENT_COLOR, None)
        draw_arrow(ax, update.tolist(), UPDATE_COLOR, None)
        title = label + (" (conflicts)" if conflicts(JACOBIAN, update) else "")
        ax.set_title(title, fontsize=8.5)
    for ax in list(axes.flat)[len(entries) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


FIGURES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "upgrad": ("upgrad_projection.png", make_upgrad_projection),
    "aggregators": ("aggregators.png", make_aggregators),
}


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description="Render the figures of the documentation.")
    parser.add_argument("--only", choices=sorted(FIGURES), action="append", default=None)
    parser.add_argument("--output-dir", type=Path, default=STATIC)
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key in args.only or list(FIGURES):
        filename, render = FIGURES[key]
        render(args.output_dir / filename)
        written.append(args.output_dir / filename)
        print(f"wrote {args.output_dir / filename}")
    return written


if __name__ == "__main__":
    main()
