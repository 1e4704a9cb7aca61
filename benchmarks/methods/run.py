"""Regenerates the methods benchmark: the toy's figures and table, MultiDigits' tables.

Usage (from the repository root)::

    PYTHONPATH=. python -m benchmarks.methods            # full run, writes docs/guide/results
    PYTHONPATH=. python -m benchmarks.methods --quick    # a few methods, small sizes, < 2 min
    PYTHONPATH=. python -m benchmarks.methods --paper    # the toy with the paper's 35,000 steps

The toy runs Adam with lr = 0.1 for 350 steps (the paper's lr = 1e-3 for 35,000 steps bounds
the path to the same length, 35, but costs 100× more: hours on a shared 2-core machine with the
convex-program methods); ``--paper`` runs the paper's setting. ``--quick`` runs the same toy
setting on fewer methods, and MultiDigits with one seed, 40 steps, three variants. Each row of a
table comes from fresh instances; timings are wall-clock on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from . import figures, multidigits, toy
from ._registry import FAMILIES, SLOW, aggregators, scalarizers

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "guide" / "results"

QUICK_TOY = ("UPGrad", "UPGrad(reg_eps=0)", "MGDA", "IMTLG", "Mean", "s:FAMO")
QUICK_DIGITS = ("Mean", "UPGrad", "IMTLG", "s:FAMO")
#: The variants that run every method; the others (the milder scales) run these few, enough to
#: show how the effect grows with the scale.
FULL_VARIANTS = ("plain", "scale 100", "conflict")
SWEEP_METHODS = (
    *("UPGrad", "MGDA", "IMTLG", "AlignedMTL", "NashMTL", "Mean", "s:GeometricMean", "s:FAMO"),
)
QUICK_VARIANTS = ("plain", "scale 100", "conflict")
#: Rows that divide each loss by its first value (the user-side remedy for loss scales).
NORMALISED = " + loss / initial"
NORMALISED_METHODS = ("Mean", "UPGrad")


def methods(m: int) -> dict[str, Callable[[int], Any]]:
    return {**aggregators(m), **scalarizers(m)}


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _print(line: str) -> None:
    print(line, flush=True)


def _toy_group(names: list[str], steps: int, lr: float) -> list[toy.ToyRun]:
    """One batched run of the toy for the methods ``names`` (in a worker process or not)."""
    torch.set_num_threads(1)
    table = methods(2)
    specs = [(name, functools.partial(table[name], 2)) for name in names]
    progress = _print if steps >= 10_000 else None
    return toy.run_many(specs, steps, lr, save_every=max(steps // 350, 1), progress=progress)


def _groups(names: list[str], workers: int) -> list[list[str]]:
    """``names`` split into ``workers`` groups of about equal cost (a convex-program method
    costs about twelve of the others per call)."""
    groups: list[list[str]] = [[] for _ in range(workers)]
    costs = [0] * workers
    for name in sorted(names, key=lambda n: n not in SLOW):
        lightest = costs.index(min(costs))
        groups[lightest].append(name)
        costs[lightest] += 12 if name in SLOW else 1
    return [group for group in groups if group]


def run_toy(
    quick: bool, paper: bool, out: Path, log: Callable[[str], None], workers: int = 1
) -> dict[str, Any]:
    steps, lr = (35_000, 1e-3) if paper else (350, 0.1)
    check_steps = 20 if quick else 50
    front = toy.pareto_set(0.02 if quick else 0.01)
    table = methods(2)
    names = [n for n in table if not quick or n in QUICK_TOY]
    factories = {name: functools.partial(table[name], 2) for name in names}
    started = time.perf_counter()
    if workers == 1:
        runs = _toy_group(names, steps, lr)
    else:
        # Each method's trajectory is the same whatever runs next to it (own rows, own random
        # stream), so splitting the methods over processes changes no result.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            groups = _groups(names, workers)
            done = pool.map(_toy_group, groups, [steps] * len(groups), [lr] * len(groups))
            by_name = {run.name: run for group in done for run in group}
        runs = [by_name[name] for name in names]
    seconds = time.perf_counter() - started
    log(f"toy: {len(names)} methods × 5 starts, {steps} steps in {seconds:.0f} s")
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        name = run.name
        difference, seconds = toy.check_against_optimizer(
            factories[name], check_steps, lr, toy.STARTS[1]
        )
        summary = toy.summary(run, front)
        rows[name] = {
            **summary,
            "family": FAMILIES.get(name, ""),
            "conflicting_updates": run.conflicting_updates,
            "both_rose": run.both_rose,
            "min_alignment": run.min_alignment,
            "updates": run.steps * len(toy.STARTS),
            "method_us_per_step": 1e6 * run.seconds_per_step,
            "optimizer_ms_per_step": 1e3 * seconds,
            "difference_vs_optimizer": difference,
        }
        log(
            f"toy {name:<18} reached {summary['reached']}/5  conflicting "
            f"{run.conflicting_updates}/{run.steps * 5}  Δ vs optimizer {difference:.1e}  "
            f"method {1e6 * run.seconds_per_step:.0f} µs / start and step"
        )
    stem = "toy_paper" if paper else "toy"
    figures.parameter_space(runs, front, out / f"{stem}_parameters.png")
    figures.loss_space(runs, front, out / f"{stem}_losses.png")
    lines = [
        f"Adam, lr = {lr:g}, {steps} steps from each of the five starts; a start reaches the "
        f"Pareto set when it ends within {toy.REACH_DISTANCE} of it (parameter space). "
        "µs / step (method): the method's own calls per start and step in the batched run (the "
        "forward and backward passes and Adam are shared by all rows); ms / step (optimizer): "
        "one `JacobianOptimizer.step` on one start, everything included.",
        "",
        "| method | family | reached | final (L1, L2) of the five starts | conflicting updates "
        "| both losses rose | µs / step (method) | ms / step (optimizer) "
        "| max \\|Δx\\| vs optimizer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        finals = " ".join(f"({a:.2f}, {b:.1f})" for a, b in row["final_losses"])
        lines.append(
            f"| {name} | {row['family']} | {row['reached']}/5 | {finals} | "
            f"{100 * row['conflicting_updates'] / row['updates']:.1f} % | {row['both_rose']} | "
            f"{row['method_us_per_step']:.0f} | {row['optimizer_ms_per_step']:.2f} | "
            f"{row['difference_vs_optimizer']:.1e} |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return {
        "steps": steps,
        "lr": lr,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }


def run_digits(quick: bool, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    steps, seeds = (40, (0,)) if quick else (60, (0, 1, 2))
    data = multidigits.make_data(1000 if quick else 3000, 500 if quick else 2000)
    variants = QUICK_VARIANTS if quick else multidigits.VARIANTS
    results: dict[str, Any] = {}
    for variant in variants:
        m = multidigits.n_tasks(variant)
        table = methods(m)
        chosen = QUICK_DIGITS if quick else None if variant in FULL_VARIANTS else SWEEP_METHODS
        names = [n for n in table if chosen is None or n in chosen]
        names += [n + NORMALISED for n in NORMALISED_METHODS]
        results[variant] = {}
        for name in names:
            make = functools.partial(table[name.removesuffix(NORMALISED)], m)
            started = time.perf_counter()
            runs = [
                multidigits.train(
                    variant,
                    make,
                    data,
                    seed,
                    steps,
                    lr=3e-3,
                    normalise=name.endswith(NORMALISED),
                )
                for seed in seeds
            ]
            accuracies = [[r.accuracies[i] for r in runs] for i in range(m)]
            worst = [min(r.accuracies[:2]) for r in runs]  # the two classification tasks
            results[variant][name] = {
                "family": FAMILIES.get(name.removesuffix(NORMALISED), ""),
                "accuracies": accuracies,
                "worst": worst,
                "ms_per_step": 1e3 * statistics.mean(r.seconds_per_step for r in runs),
                "mean_cosine": statistics.mean(r.mean_cosine for r in runs),
                "late_cosine": statistics.mean(r.late_cosine for r in runs),
                "negative_cosine_share": statistics.mean(r.negative_cosine_share for r in runs),
                "feature_cosine": statistics.mean(r.feature_cosine for r in runs),
                "cosine_per_seed": [r.mean_cosine for r in runs],
            }
            log(
                f"digits {variant:<9} {name:<18} worst {_fmt(worst)}  "
                f"({time.perf_counter() - started:.1f} s)"
            )
    lines = [
        f"Test accuracy (%), mean ± std over seeds {list(seeds)}; {steps} steps of Adam "
        "(lr = 3e-3, batches of 128 pairs). The worst digit task is the lower of the first two "
        "columns (the regression's accuracy, its prediction rounded to the digit, stays low for "
        "every method in so few steps); in the conflict variant the two columns are its two "
        "yes/no questions about the left digit, whose accuracies sum to at most 110 %.",
        "",
    ]
    for variant, rows in results.items():
        tasks = multidigits.task_names(variant)
        lines += [
            f"### {variant}",
            "",
            "| method | family | " + " | ".join(tasks) + " | worst digit task | ms / step |",
            "|---|---|" + "---|" * len(tasks) + "---|---|",
        ]
        for name, row in rows.items():
            cells = " | ".join(_fmt(a) for a in row["accuracies"])
            lines.append(
                f"| {name} | {row['family']} | {cells} | {_fmt(row['worst'])} | "
                f"{row['ms_per_step']:.1f} |"
            )
        lines.append("")
    lines += [
        "### Conflict between the tasks' gradients",
        "",
        "Cosine between the task gradients with respect to the trunk's parameters (what the "
        "aggregator sees in multi-task mode), every 5th step of the runs with the mean (`Mean`), "
        "averaged over the run, over its second half, and per seed; the share of measured steps "
        "with a negative cosine (for three tasks: some pair negative); and, for reference, the "
        "mean cosine with respect to the trunk's output.",
        "",
        "| variant | mean cosine | second half | per seed | steps with a negative cosine "
        "| at the trunk's output |",
        "|---|---|---|---|---|---|",
    ]
    for variant, rows in results.items():
        reference = rows.get("Mean") or next(iter(rows.values()))
        per_seed = " / ".join(f"{c:.2f}" for c in reference["cosine_per_seed"])
        lines.append(
            f"| {variant} | {reference['mean_cosine']:.3f} | {reference['late_cosine']:.3f} | "
            f"{per_seed} | {100 * reference['negative_cosine_share']:.0f} % | "
            f"{reference['feature_cosine']:.3f} |"
        )
    (out / "multidigits.md").write_text("\n".join(lines) + "\n")
    figures.digits_scales(results, out / "multidigits_scales.png")
    return {"steps": steps, "seeds": list(seeds), "results": results}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few methods, small sizes")
    parser.add_argument("--paper", action="store_true", help="the toy with 35,000 steps")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--only", choices=("toy", "digits"), default=None)
    parser.add_argument(
        "--workers", type=int, default=1, help="processes for the toy (same results), default 1"
    )
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(line, flush=True)

    results: dict[str, Any] = {"quick": args.quick, "torch": torch.__version__}
    if args.only in (None, "toy"):
        results["toy"] = run_toy(args.quick, args.paper, out, log, args.workers)
    if args.only in (None, "digits"):
        results["digits"] = run_digits(args.quick, out, log)
    results["seconds"] = time.perf_counter() - started
    suffix = ("_" + args.only if args.only else "") + ("_paper" if args.paper else "")
    (out / f"results{suffix}.json").write_text(json.dumps(results, indent=1))
    log(f"wrote {out} in {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
