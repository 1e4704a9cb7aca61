"""Renders the figures of the documentation into ``docs/_static/``.

- ``upgrad_projection.png``: two conflicting gradients, their dual cone, the projections UPGrad
  averages, and the mean for comparison.
- ``aggregators.png``: the update of every aggregator for the same two conflicting gradients.
- ``quickstart_curves.png``: the training curves of ``examples/quickstart.py``
  (``JacobianOptimizer`` with UPGrad versus the summed loss).

Run from the repository root: ``python docs/make_figures.py`` (or ``--only aggregators``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from jdoptim.aggregation import (
    IMTLG,
    MGDA,
    Aggregator,
    AlignedMTL,
    CAGrad,
    ConFIG,
    Constant,
    DualProj,
    GradDrop,
    Mean,
    NashMTL,
    PCGrad,
    Random,
    Sum,
    UPGrad,
)

STATIC = Path(__file__).resolve().parent / "_static"

#: Two conflicting gradients (g1 · g2 < 0) of different norms: their mean conflicts with g2.
JACOBIAN = torch.tensor([[3.0, 0.4], [-0.8, 1.0]], dtype=torch.float64)

GRADIENT_COLOR = "black"
UPDATE_COLOR = "tab:red"
CONE_COLOR = "tab:green"


def dual_cone_rays(jacobian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two unit rays bounding ``{x : J x >= 0}`` for two 2-D rows that conflict."""
    rays = []
    for i, j in ((0, 1), (1, 0)):
        g = jacobian[i]
        for candidate in (np.array([-g[1], g[0]]), np.array([g[1], -g[0]])):
            if candidate @ jacobian[j] >= 0:  # perpendicular to g_i, on the side of g_j
                rays.append(candidate / np.linalg.norm(candidate))
                break
    return rays[0], rays[1]


def project_on_cone(g: np.ndarray, rays: tuple[np.ndarray, np.ndarray], jacobian: np.ndarray):
    """Euclidean projection of ``g`` on the 2-D convex cone spanned by ``rays``."""
    if (jacobian @ g >= -1e-12).all():
        return g
    candidates = [max(float(g @ r), 0.0) * r for r in rays]
    return min(candidates, key=lambda p: float(np.linalg.norm(g - p)))


def draw_cone(ax: Axes, jacobian: np.ndarray, radius: float) -> None:
    ray1, ray2 = dual_cone_rays(jacobian)
    start, end = math.atan2(ray1[1], ray1[0]), math.atan2(ray2[1], ray2[0])
    if (end - start) % (2 * math.pi) > math.pi:
        start, end = end, start
    angles = np.linspace(start, start + (end - start) % (2 * math.pi), 50)
    xs = np.concatenate([[0.0], radius * np.cos(angles), [0.0]])
    ys = np.concatenate([[0.0], radius * np.sin(angles), [0.0]])
    ax.fill(xs, ys, color=CONE_COLOR, alpha=0.15, linewidth=0)


def draw_arrow(ax: Axes, vector: Sequence[float], color: str, label: str | None, **kw) -> None:
    ax.annotate(
        "",
        xy=(vector[0], vector[1]),
        xytext=(0, 0),
        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 2, "shrinkA": 0, "shrinkB": 0, **kw},
    )
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


def make_upgrad_projection(path: Path) -> None:
    jacobian = JACOBIAN.numpy()
    rays = dual_cone_rays(jacobian)
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    setup_axes(ax, 3.4)
    draw_cone(ax, jacobian, radius=5.0)
    for i, g in enumerate(jacobian):
        projection = project_on_cone(g, rays, jacobian)
        ax.plot([g[0], projection[0]], [g[1], projection[1]], ls=":", color="0.4")
        if not np.allclose(projection, g):
            draw_arrow(ax, projection, "0.4", rf"$\pi(g_{i + 1})$", ls="--", lw=1.2)
        draw_arrow(ax, g, GRADIENT_COLOR, rf"$g_{i + 1}$")
    draw_arrow(ax, Mean()(JACOBIAN).tolist(), "0.6", "mean")
    draw_arrow(ax, UPGrad()(JACOBIAN).tolist(), UPDATE_COLOR, "UPGrad")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def aggregators_to_plot() -> list[tuple[str, Callable[[], Aggregator]]]:
    """Every aggregator that accepts two rows (Krum and TrimmedMean need at least three)."""
    return [
        ("UPGrad", UPGrad),
        ("DualProj", DualProj),
        ("MGDA", MGDA),
        ("CAGrad(c=0.5)", lambda: CAGrad(c=0.5)),
        ("AlignedMTL", AlignedMTL),
        ("IMTLG", IMTLG),
        ("PCGrad", PCGrad),
        ("ConFIG", ConFIG),
        ("NashMTL", lambda: NashMTL(n_tasks=2)),
        ("GradDrop", GradDrop),
        ("Random", Random),
        ("Mean", Mean),
        ("Sum", Sum),
        ("Constant([1, 2])", lambda: Constant(torch.tensor([1.0, 2.0], dtype=torch.float64))),
    ]


def conflicting(jacobian: np.ndarray, update: np.ndarray) -> bool:
    """Whether ``update`` conflicts with a row, beyond the tolerance of regularised solvers."""
    norms = np.linalg.norm(jacobian, axis=1) * max(float(np.linalg.norm(update)), 1e-12)
    return bool((jacobian @ update / norms < -1e-2).any())


def make_aggregators(path: Path) -> None:
    jacobian = JACOBIAN.numpy()
    entries = aggregators_to_plot()
    n_cols = 7
    n_rows = math.ceil(len(entries) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 1.75 * n_rows))
    for ax, (name, make) in zip(axes.flat, entries, strict=False):
        torch.manual_seed(0)  # Random, GradDrop and PCGrad draw random numbers
        update = make()(JACOBIAN).numpy()
        limit = 1.15 * max(np.abs(jacobian).max(), np.abs(update).max())
        setup_axes(ax, limit)
        draw_cone(ax, jacobian, radius=2 * limit)
        for g in jacobian:
            draw_arrow(ax, g, GRADIENT_COLOR, None)
        draw_arrow(ax, update, UPDATE_COLOR, None)
        conflicts = conflicting(jacobian, update)
        ax.set_title(name + (" (conflicts)" if conflicts else ""), fontsize=9)
    for ax in list(axes.flat)[len(entries) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_quickstart() -> ModuleType:
    """Imports ``examples/quickstart.py`` (the examples folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("jdoptim_example_quickstart", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_quickstart_curves(path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        history = load_quickstart().main([])  # the quickstart's defaults
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharex=True)
    styles = {"JacobianOptimizer(UPGrad)": UPDATE_COLOR, "summed loss": "0.45"}
    for task, ax in enumerate(axes):
        for name, runs in history.items():
            steps = np.arange(1, len(runs) + 1)
            ax.plot(steps, [losses[task] for losses in runs], color=styles.get(name), label=name)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"task {task + 1} training loss", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


FIGURES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "upgrad": ("upgrad_projection.png", make_upgrad_projection),
    "aggregators": ("aggregators.png", make_aggregators),
    "quickstart": ("quickstart_curves.png", make_quickstart_curves),
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
