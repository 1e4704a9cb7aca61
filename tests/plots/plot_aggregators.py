"""Visual check of the aggregators on 2-row Jacobians in 2-D.

For each scenario (a pair of gradients), one panel per aggregator shows both gradients (blue), the
dual cone ``{x : g₁·x ≥ 0, g₂·x ≥ 0}`` (shaded: the directions that conflict with neither), and the
aggregator's output (red). Papers describe what to look for: UPGrad and DualProj land in the dual
cone, MGDA is the point of smallest norm of the segment [g₁, g₂], Mean is its midpoint, etc.

Usage (extra ``plot``)::

    python tests/plots/plot_aggregators.py [output.png]   # default: tests/plots/aggregators.png

Stateful methods are drawn on their first call (GradVac, PCD and CRMOGM start from a fresh state;
MoDo and SDMGrad are given the Gramian of one batch as their cross matrix).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor

from jdoptim.aggregation import (
    IMTLG,
    MGDA,
    PCD,
    Aggregator,
    AlignedMTL,
    CAGrad,
    ConFIG,
    Constant,
    CRMOGMWeighting,
    DualProj,
    FairGrad,
    GradDrop,
    GradVac,
    GramianWeightedAggregator,
    Mean,
    MoDoWeighting,
    NashMTL,
    PCGrad,
    Random,
    SDMGradWeighting,
    Sum,
    TrimmedMean,
    UPGrad,
    UPGradWeighting,
)

DEFAULT_PATH = Path(__file__).with_name("aggregators.png")


def _unit(angle_degrees: float) -> list[float]:
    angle = math.radians(angle_degrees)
    return [math.cos(angle), math.sin(angle)]


#: (title, Jacobian [2, 2]) pairs.
SCENARIOS: list[tuple[str, Tensor]] = [
    ("unit gradients at 120°", torch.tensor([_unit(30.0), _unit(150.0)])),
    (
        "norms 1 and 4, at 110°",
        torch.tensor([_unit(80.0), [4.0 * v for v in _unit(-30.0)]]),
    ),
]


def aggregators() -> list[tuple[str, Aggregator | None]]:
    """The aggregators drawn, with their labels; None for those undefined on two rows."""
    return [
        ("UPGrad", UPGrad()),
        ("DualProj", DualProj()),
        ("MGDA", MGDA()),
        ("IMTLG", IMTLG()),
        ("AlignedMTL", AlignedMTL()),
        ("CAGrad(c=0.5)", CAGrad(c=0.5)),
        ("NashMTL(max_norm=1)", NashMTL(n_tasks=2)),
        ("PCGrad", PCGrad()),
        ("Krum (needs m ≥ 3)", None),
        ("Mean", Mean()),
        ("Sum", Sum()),
        ("Constant([0.25, 0.75])", Constant(torch.tensor([0.25, 0.75]))),
        ("Random (seed 0)", Random()),
        ("ConFIG", ConFIG()),
        ("GradDrop (seed 0)", GradDrop()),
        ("TrimmedMean(0) = Mean", TrimmedMean(trim_number=0)),
        ("FairGrad(alpha=1)", FairGrad(alpha=1.0)),
        ("GradVac (1st call)", GradVac()),
        ("PCD (1st call)", PCD()),
        ("CRMOGM(UPGrad), 1st call", GramianWeightedAggregator(CRMOGMWeighting(UPGradWeighting()))),
        ("MoDo (one batch, 1st call)", GramianWeightedAggregator(MoDoWeighting())),
        ("SDMGrad (one batch)", GramianWeightedAggregator(SDMGradWeighting())),
    ]


def _dual_cone_polygon(jacobian: Tensor, radius: float) -> list[tuple[float, float]]:
    """Vertices of the dual cone of the rows, cut at ``radius``; empty if it is only {0}."""
    angles = torch.linspace(0.0, 2.0 * math.pi, 1441)[:-1]
    points = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    inside = (points @ jacobian.T >= 0.0).all(dim=1)
    if not inside.any():
        return []
    if inside.all():
        return [(float(x), float(y)) for x, y in points]
    # Start the sweep just after an outside angle so that the inside arc is contiguous.
    start = int(torch.nonzero(~inside)[0])
    order = [(start + i) % len(angles) for i in range(len(angles))]
    arc = [(float(points[i, 0]), float(points[i, 1])) for i in order if inside[i]]
    return [(0.0, 0.0), *arc]


def _aggregate(aggregator: Aggregator, jacobian: Tensor) -> Tensor:
    torch.manual_seed(0)  # Random and GradDrop draw from torch's RNG
    return aggregator(jacobian)


def plot_aggregators(path: str | Path = DEFAULT_PATH) -> Path:
    """Draws every aggregator on every scenario and saves the figure as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon

    path = Path(path)
    entries = aggregators()
    columns = 4
    rows = math.ceil(len(entries) / columns)
    figure = plt.figure(
        figsize=(3.2 * columns * len(SCENARIOS), 3.4 * rows + 0.8), layout="constrained"
    )
    figure.suptitle(
        "blue: gradients g1, g2 (dotted: the segment between them)   red: aggregation A(J)   "
        "green: dual cone {x : J x ≥ 0}, the directions that conflict with no gradient",
        fontsize=12,
    )
    subfigures = figure.subfigures(1, len(SCENARIOS), wspace=0.03, squeeze=False)[0]
    for subfigure, (title, jacobian) in zip(subfigures, SCENARIOS):
        subfigure.suptitle(title, fontsize=15)
        axes = subfigure.subplots(rows, columns)
        # Fresh instances per scenario: the stateful methods are drawn on their first call.
        outputs = [None if a is None else _aggregate(a, jacobian) for _, a in aggregators()]
        points = torch.cat(
            [jacobian, torch.zeros(1, 2), *[o[None] for o in outputs if o is not None]]
        )
        low, high = points.min(dim=0).values, points.max(dim=0).values
        center, half = (low + high) / 2, 0.6 * float((high - low).max())
        limit = float((points - center).norm(dim=1).max()) + half
        cone = _dual_cone_polygon(jacobian, radius=2.0 * limit)
        for ax, (label, aggregator), output in zip(axes.flat, entries, outputs):
            ax.set_xlim(float(center[0]) - half, float(center[0]) + half)
            ax.set_ylim(float(center[1]) - half, float(center[1]) + half)
            ax.set_aspect("equal")
            ax.axhline(0.0, color="0.85", lw=0.8, zorder=0)
            ax.axvline(0.0, color="0.85", lw=0.8, zorder=0)
            ax.set_xticks([])
            ax.set_yticks([])
            if cone:
                ax.add_patch(Polygon(cone, closed=True, color="tab:green", alpha=0.15, lw=0))
            ax.plot(jacobian[:, 0], jacobian[:, 1], ls=":", color="tab:blue", lw=1.0)
            for i, gradient in enumerate(jacobian):
                ax.annotate(
                    "",
                    xy=(float(gradient[0]), float(gradient[1])),
                    xytext=(0.0, 0.0),
                    arrowprops={"arrowstyle": "-|>", "color": "tab:blue", "lw": 2.0},
                )
                ax.text(float(gradient[0]), float(gradient[1]), f" g{i + 1}", color="tab:blue")
            if output is None:
                ax.set_title(label, fontsize=11, color="0.5")
                ax.text(*center.tolist(), "undefined for m = 2", ha="center", color="0.5")
                continue
            ax.annotate(
                "",
                xy=(float(output[0]), float(output[1])),
                xytext=(0.0, 0.0),
                arrowprops={"arrowstyle": "-|>", "color": "tab:red", "lw": 2.5},
            )
            products = jacobian @ output
            ax.set_title(label, fontsize=11)
            caption = f"A = ({output[0]:.2f}, {output[1]:.2f})"
            caption += f"   J·A = ({products[0]:.2f}, {products[1]:.2f})"
            ax.set_xlabel(caption, fontsize=9)
    figure.savefig(path, dpi=60)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH), help="output PNG file")
    arguments = parser.parse_args()
    print(plot_aggregators(arguments.path))


if __name__ == "__main__":
    main()
