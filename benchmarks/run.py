"""The performance suite: every workload with its baselines, in one process.

Prints one table: for each workload and configuration, the median wall-clock time of a step, the
median CPU time of the process during it, the ratio of the wall time to the workload's baseline,
and the peak memory of one step, measured in a fresh subprocess per configuration (the growth of
the resident set's high-water mark during one step after a warm-up step; the subprocess sets
``MALLOC_MMAP_THRESHOLD_`` so that freed tensors leave the resident set at once). Workloads whose
module is missing are reported as ``unavailable``.

Run ``PYTHONPATH=. python benchmarks/run.py`` (full, a few minutes on 2 cores), ``--quick`` (under
a minute, small sizes, memory only for the IWRM workload), ``--only aggregation,weighting`` to
select workloads, ``--no-memory`` to skip the subprocesses, ``--json PATH`` to save the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

#: A configuration builds its inputs and returns the function that runs one step.
Setup = Callable[[], Callable[[], object]]


@dataclass
class Workload:
    """A named set of configurations timed together; ratios are taken to ``baseline``."""

    name: str
    baseline: str
    configurations: dict[str, Setup]
    targets: dict[str, str] = field(default_factory=dict)
    repeats: int = 10
    measure_memory: bool = True
    #: Time the configurations repeat by repeat (True) or each in one block of calls (False).
    interleaved: bool = True


# ----------------------------------------------------------------------------------------------
# Aggregation of [m, n] Jacobians, and the UPGrad weighting alone.


def _jacobian(m: int, n: int) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(m, n, generator=generator)


def _aggregation_setup(m: int, n: int, aggregator_name: str) -> Setup:
    def setup() -> Callable[[], object]:
        from jdoptim import aggregation

        jacobian = _jacobian(m, n)
        if aggregator_name == "J Jᵀ":
            return lambda: jacobian @ jacobian.T
        if aggregator_name.startswith("UPGrad"):
            solver = aggregator_name.split("solver=")[1].rstrip(")")
            aggregator: nn.Module = aggregation.UPGrad(solver=solver)
        else:
            aggregator = getattr(aggregation, aggregator_name)()
        return lambda: aggregator(jacobian)

    return setup


def aggregation_workloads(quick: bool) -> list[Workload]:
    shapes = (
        [(2, 10**4), (8, 10**5)]
        if quick
        else [
            (2, 10**6),
            (2, 10**7),
            (8, 10**6),
            (8, 10**7),
            (32, 10**6),
            (64, 10**6),
        ]
    )
    names = (
        "J Jᵀ",
        "UPGrad(solver=auto)",
        "UPGrad(solver=torch)",
        "UPGrad(solver=quadprog)",
        "Mean",
    )
    return [
        Workload(
            name=f"aggregation m={m} n={n:.0e}",
            baseline="J Jᵀ",
            configurations={name: _aggregation_setup(m, n, name) for name in names},
            targets={"UPGrad(solver=auto)": "≤ 2.2" if m <= 8 and n >= 10**6 else ""},
            repeats=3 if quick else (5 if n >= 10**7 else 10),
            measure_memory=not quick,
        )
        for m, n in shapes
    ]


#: The methods of the methods workload: aggregators, and Gramian weightings (wrapped).
_METHODS = (
    "FairGrad",
    "GradVac",
    "ExcessMTL",
    "PCD",
    "DBMTL",
    "MoCo",
    "CRMOGM(UPGrad)",
    "MoDo",
    "SDMGrad",
    "GradNorm",
)


def _method(name: str) -> tuple[nn.Module, bool]:
    """A fresh instance of a method of the methods workload, and whether it reads the losses."""
    from jdoptim import aggregation as agg

    weighted = agg.GramianWeightedAggregator
    methods: dict[str, Callable[[], nn.Module]] = {
        "FairGrad": lambda: agg.FairGrad(alpha=1.0),
        "GradVac": agg.GradVac,
        "ExcessMTL": agg.ExcessMTL,
        "PCD": agg.PCD,
        "DBMTL": agg.DBMTL,
        "MoCo": agg.MoCo,
        "CRMOGM(UPGrad)": lambda: weighted(agg.CRMOGMWeighting(agg.UPGradWeighting())),
        "MoDo": lambda: weighted(agg.MoDoWeighting()),
        "SDMGrad": lambda: weighted(agg.SDMGradWeighting()),
        "GradNorm": lambda: weighted(agg.GradNormWeighting()),
    }
    method = methods[name]()
    return method, bool(getattr(method, "requires_losses", False))


def _method_setup(m: int, n: int, name: str) -> Setup:
    def setup() -> Callable[[], object]:
        jacobian = _jacobian(m, n)
        if name == "J Jᵀ":
            return lambda: jacobian @ jacobian.T
        method, reads_losses = _method(name)
        losses = torch.rand(m, generator=torch.Generator().manual_seed(1)) + 0.5
        if reads_losses:
            return lambda: method(jacobian, losses=losses)
        return lambda: method(jacobian)

    return setup


def methods_workloads(quick: bool) -> list[Workload]:
    """The methods of the second round of aggregators on ``[m, n]`` Jacobians, against
    ``J Jᵀ`` (each call continues the method's state, as in training)."""
    shapes = [(2, 10**4)] if quick else [(2, 10**6), (8, 10**6), (32, 10**6)]
    names = ("J Jᵀ", *(("FairGrad", "PCD") if quick else _METHODS))
    return [
        Workload(
            name=f"methods m={m} n={n:.0e}",
            baseline="J Jᵀ",
            configurations={name: _method_setup(m, n, name) for name in names},
            targets={"FairGrad": "≤ 2" if m <= 8 and n >= 10**6 else ""},
            repeats=3 if quick else 10,
            measure_memory=False,
        )
        for m, n in shapes
    ]


def _weighting_setup(m: int, solver: str, n: int = 1000, reg_eps: float = 1e-4) -> Setup:
    def setup() -> Callable[[], object]:
        from jdoptim.aggregation import UPGradWeighting

        jacobian = _jacobian(m, n)
        gramian = jacobian @ jacobian.T
        weighting = UPGradWeighting(reg_eps=reg_eps, solver=solver)
        return lambda: weighting(gramian)

    return setup


#: Targets of UPGradWeighting with the default solver, for full-rank and rank-deficient Gramians.
_WEIGHTING_TARGETS = {
    64: "≤ 3 ms",
    128: "≤ 12 ms",
    256: "≤ 60 ms",
    512: "≤ 250 ms",
    1024: "≤ 1.5 s",
}


def weighting_workloads(quick: bool) -> list[Workload]:
    workloads = []
    for m, target in ((64, "≤ 2 ms"), (128, "≤ 10 ms")):
        # quadprog takes about half a second per call at m = 128.
        solvers = ("torch",) if quick and m == 128 else ("torch", "quadprog")
        workloads.append(
            Workload(
                name=f"UPGradWeighting m={m}",
                baseline="torch",
                configurations={s: _weighting_setup(m, s) for s in solvers},
                targets={"torch": target},
                repeats=3 if quick else 21,
                measure_memory=False,
                # The weighting alone, call after call: a quadprog call (numpy, Python loops)
                # just before a torch call makes that call ~0.8 ms slower at m = 64 (cold caches).
                interleaved=False,
            )
        )
    # The default solver on Gramians of [m, n] Jacobians with more rows than columns (rank
    # deficient, as per-sample gradients often are), with twice as many columns, and with 1000
    # (rank-deficient from m = 1024 on), up to the m of instance-wise risk minimisation with real
    # batch sizes. quadprog, one QP after the other, only where it takes less than a second.
    for m in (64, 128, 256, 512, 1024):
        if quick and m > 64:
            break
        for n in (m // 2,) if quick else (m // 2, 2 * m, 1000):
            solvers = ("auto", "quadprog") if m <= 128 and not quick else ("auto",)
            workloads.append(
                Workload(
                    name=f"UPGradWeighting m={m} n={n}",
                    baseline="auto",
                    configurations={s: _weighting_setup(m, s, n) for s in solvers},
                    targets={"auto": _WEIGHTING_TARGETS[m]},
                    repeats=3 if quick else (21 if m <= 128 else 5 if m <= 512 else 3),
                    measure_memory=False,
                    interleaved=False,
                )
            )
    if quick:
        return workloads
    # Singular Gramians (reg_eps = 0 with more rows than columns): no target, but the solvers'
    # cliffs show here. "auto" takes quadprog's solve in the range up to m = 128 for a low rank
    # and the torch solver for a high one; every solver here, to see the choice was right.
    for m, n in ((64, 32), (64, 48), (128, 64), (128, 96), (256, 128)):
        solvers = ("auto", "quadprog", "torch") if m <= 128 else ("auto",)
        workloads.append(
            Workload(
                name=f"UPGradW(reg_eps=0) m={m} n={n}",
                baseline="auto",
                configurations={s: _weighting_setup(m, s, n, reg_eps=0.0) for s in solvers},
                repeats=5,
                measure_memory=False,
                interleaved=False,
            )
        )
    return workloads


# ----------------------------------------------------------------------------------------------
# backward / mtl_backward + jac_to_grad on the MLP trunk (4 hidden layers of 512 units).

_MLP_WIDTH = 512
_MLP_INPUTS = 64


class _MultiHeadMLP(nn.Module):
    """A trunk of 4 hidden layers of 512 units and one linear head per loss."""

    def __init__(self, m: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = _MLP_INPUTS
        for _ in range(4):
            layers += [nn.Linear(size, _MLP_WIDTH), nn.ReLU()]
            size = _MLP_WIDTH
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(_MLP_WIDTH, 1) for _ in range(m))

    def losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.trunk(x)
        losses = [
            ((head(features).squeeze(1) - y[:, i]) ** 2).mean() for i, head in enumerate(self.heads)
        ]
        return features, losses


def _mlp_setup(m: int, configuration: str, batch: int) -> Setup:
    def setup() -> Callable[[], object]:
        from jdoptim.aggregation import UPGrad

        aggregator = UPGrad()
        torch.manual_seed(0)
        model = _MultiHeadMLP(m)
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params, lr=1e-6)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, _MLP_INPUTS, generator=generator)
        y = torch.randn(batch, m, generator=generator)

        if configuration == "summed":

            def step() -> None:
                optimizer.zero_grad()
                torch.stack(model.losses(x, y)[1]).sum().backward()
                optimizer.step()

        elif configuration == "naive loop":

            def step() -> None:
                optimizer.zero_grad()
                losses = model.losses(x, y)[1]
                rows = []
                for i, loss in enumerate(losses):
                    grads = torch.autograd.grad(
                        loss, params, retain_graph=i < m - 1, allow_unused=True
                    )
                    rows.append(
                        torch.cat(
                            [
                                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                                for g, p in zip(grads, params, strict=True)
                            ]
                        )
                    )
                update = aggregator(torch.stack(rows))
                offset = 0
                for p in params:
                    p.grad = update[offset : offset + p.numel()].view_as(p)
                    offset += p.numel()
                optimizer.step()

        elif configuration == "backward+jac_to_grad":
            from jdoptim import autojac

            def step() -> None:
                optimizer.zero_grad()
                autojac.backward(torch.stack(model.losses(x, y)[1]), inputs=params)
                autojac.jac_to_grad(params, aggregator)
                optimizer.step()

        elif configuration == "mtl_backward+jac_to_grad":
            from jdoptim import autojac

            shared = list(model.trunk.parameters())

            def step() -> None:
                optimizer.zero_grad()
                features, losses = model.losses(x, y)
                autojac.mtl_backward(losses, features=features)
                autojac.jac_to_grad(shared, aggregator)
                optimizer.step()

        elif configuration == "feature-level":
            from jdoptim import autojac

            def step() -> None:
                optimizer.zero_grad()
                features, losses = model.losses(x, y)
                autojac.feature_backward(losses, features, aggregator)
                optimizer.step()

        else:
            raise ValueError(
                f"`configuration` must be an MLP configuration, got {configuration!r}."
            )
        return step

    return setup


def mlp_workloads(quick: bool) -> list[Workload]:
    configurations = (
        "summed",
        "naive loop",
        "backward+jac_to_grad",
        "mtl_backward+jac_to_grad",
        "feature-level",
    )
    return [
        Workload(
            name=f"MLP 4×512 m={m} batch=64",
            baseline="summed",
            configurations={c: _mlp_setup(m, c, 64) for c in configurations},
            targets={
                "mtl_backward+jac_to_grad": "≤ 8" if m == 8 else "",
                "feature-level": {8: "≤ 1.6", 32: "≤ 2.5"}.get(m, ""),
            },
            repeats=2 if quick else 10,
            measure_memory=not quick,
        )
        for m in ((2,) if quick else (2, 8, 32))
    ]


# ----------------------------------------------------------------------------------------------
# Scalarizer mode of JacobianOptimizer on the same MLP: one ordinary backward of the scalarized
# losses, against the plain summed-loss step.

SCALARIZERS = ("Mean", "Random", "UW", "DWA", "FAMO")


def _scalarizer_setup(m: int, configuration: str) -> Setup:
    def setup() -> Callable[[], object]:
        from jdoptim import JacobianOptimizer, scalarization

        torch.manual_seed(0)
        model = _MultiHeadMLP(m)
        sgd = torch.optim.SGD(model.parameters(), lr=1e-6)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, _MLP_INPUTS, generator=generator)
        y = torch.randn(64, m, generator=generator)

        def losses() -> Tensor:
            return torch.stack(model.losses(x, y)[1])

        if configuration == "summed":

            def step() -> None:
                sgd.zero_grad()
                losses().sum().backward()
                sgd.step()

            return step
        made = {
            "Mean": scalarization.Mean,
            "Random": scalarization.Random,
            "UW": lambda: scalarization.UW(m),
            "DWA": scalarization.DWA,
            "FAMO": lambda: scalarization.FAMO(m),
        }[configuration]()
        opt = JacobianOptimizer(sgd, scalarizer=made)
        if configuration == "FAMO":
            # With a closure: the step re-evaluates the losses without gradients and updates FAMO.
            def closure() -> Tensor:
                opt.zero_grad()
                return losses()

            return lambda: opt.step(closure)

        def scalarized_step() -> None:
            opt.zero_grad()
            opt.step(losses())

        return scalarized_step

    return setup


def scalarizer_workloads(quick: bool) -> list[Workload]:
    return [
        Workload(
            name=f"scalarizer MLP m={m}",
            baseline="summed",
            configurations={c: _scalarizer_setup(m, c) for c in ("summed", *SCALARIZERS)},
            targets={c: "≤ 2.1" if c == "FAMO" else "≤ 1.05" for c in SCALARIZERS},
            repeats=2 if quick else 30,
            measure_memory=not quick,
        )
        for m in ((2,) if quick else (2, 8, 32))
    ]


# ----------------------------------------------------------------------------------------------
# Instance-wise risk minimisation on the small CNN, and the optimizer's overhead: the steps of
# benchmarks/autogram_iwrm.py and benchmarks/optimizer_overhead.py.


def _iwrm_setup(configuration: str, batch: int) -> Setup:
    def setup() -> Callable[[], object]:
        import autogram_iwrm

        torch.manual_seed(0)
        step = autogram_iwrm.make_step(configuration, autogram_iwrm.make_cnn())
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (batch,), generator=generator)
        return lambda: step(x, y)

    return setup


def iwrm_workloads(quick: bool) -> list[Workload]:
    batch = 16 if quick else 64
    return [
        Workload(
            name=f"IWRM CNN batch={batch}",
            baseline="summed",
            configurations={
                c: _iwrm_setup(c, batch)
                for c in ("summed", "autogram", "autojac", "autojac_vmap", "autojac_loop")
            },
            targets={"autogram": "≤ 3 (memory ≤ 1.5)", "autojac": "≤ 30 (memory ≤ 5)"},
            repeats=2 if quick else 10,
            measure_memory=True,
        )
    ]


def _transformer_setup(configuration: str, name: str, batch: int) -> Setup:
    def setup() -> Callable[[], object]:
        import autogram_transformers

        torch.manual_seed(0)
        model = autogram_transformers.make_model(name)
        step = autogram_transformers.make_step(configuration, name, model)
        x, y = autogram_transformers.make_batch(name, batch)
        return lambda: step(x, y)

    return setup


def transformer_workloads(quick: bool) -> list[Workload]:
    """IWRM of the encoder and the causal language models (untied and tied) of
    benchmarks/autogram_transformers.py, at their own batch sizes even when ``quick`` (a smaller
    batch changes the ratios: the Gramian's cost grows with the square of the batch)."""
    workloads = []
    for name, batch in (("encoder", 32), ("causal_lm", 16), ("causal_lm_tied", 16)):
        workloads.append(
            Workload(
                name=f"IWRM transformer {name} batch={batch}",
                baseline="summed",
                configurations={
                    c: _transformer_setup(c, name, batch) for c in ("summed", "autogram")
                },
                targets={"autogram": "≤ 2.5 (memory ≤ 1.5)"},
                repeats=2 if quick else 10,
                measure_memory=not quick,
            )
        )
    return workloads


def _optimizer_setup(configuration: str, m: int) -> Setup:
    def setup() -> Callable[[], object]:
        import optimizer_overhead

        step = optimizer_overhead.make_step(configuration, optimizer_overhead.make_mlp(m))
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 64, generator=generator)
        y = torch.randn(64, m, generator=generator)
        return lambda: step(x, y)

    return setup


def optimizer_workloads(quick: bool) -> list[Workload]:
    m = 2 if quick else 8
    configurations = ("hand-written", "JacobianOptimizer", "summed")
    return [
        Workload(
            name=f"JacobianOptimizer MLP m={m}",
            baseline="hand-written",
            configurations={c: _optimizer_setup(c, m) for c in configurations},
            targets={"JacobianOptimizer": "≤ 1.02"},
            repeats=3 if quick else 30,
            measure_memory=not quick,
        )
    ]


WORKLOAD_GROUPS: dict[str, Callable[[bool], list[Workload]]] = {
    "aggregation": aggregation_workloads,
    "methods": methods_workloads,
    "weighting": weighting_workloads,
    "mlp": mlp_workloads,
    "iwrm": iwrm_workloads,
    "transformers": transformer_workloads,
    "optimizer": optimizer_workloads,
    "scalarizer": scalarizer_workloads,
}


# ----------------------------------------------------------------------------------------------
# Measurement.


@dataclass
class Measurement:
    wall_s: float = float("nan")
    cpu_s: float = float("nan")
    peak_bytes: float = float("nan")
    status: str = "ok"


def time_workload(workload: Workload) -> dict[str, Measurement]:
    """Median wall and CPU time of each configuration, the configurations interleaved."""
    results = {name: Measurement() for name in workload.configurations}
    steps: dict[str, Callable[[], object]] = {}
    for name, setup in workload.configurations.items():
        try:
            steps[name] = setup()
            steps[name]()  # Warm-up (lazy initialisation, optimizer state).
        except ImportError as error:
            results[name].status = f"unavailable ({error.name or error})"
        except Exception as error:  # A broken workload must not stop the suite.
            results[name].status = f"failed ({type(error).__name__}: {error})"
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    if workload.interleaved:
        order = [name for _ in range(workload.repeats) for name in steps]
    else:
        order = [name for name in steps for _ in range(workload.repeats)]
    for name in order:
        start, start_cpu = time.perf_counter(), time.process_time()
        steps[name]()
        wall[name].append(time.perf_counter() - start)
        cpu[name].append(time.process_time() - start_cpu)
    for name in steps:
        results[name].wall_s = statistics.median(wall[name])
        results[name].cpu_s = statistics.median(cpu[name])
    return results


def peak_memory_child(group: str, workload_name: str, configuration: str, quick: bool) -> int:
    """In a fresh process: growth of the peak RSS during one step, after a warm-up step."""
    from _memory import peak_growth_bytes

    workload = next(w for w in WORKLOAD_GROUPS[group](quick) if w.name == workload_name)
    step = workload.configurations[configuration]()
    step()
    return peak_growth_bytes(step)


def measure_peak_memory(group: str, workload: Workload, quick: bool) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for name in workload.configurations:
        command = [sys.executable, __file__, "--child", group, workload.name, name]
        if quick:
            command.append("--quick")
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
            check=False,
        )
        if completed.returncode == 0:
            peaks[name] = float(completed.stdout.strip().splitlines()[-1])
    return peaks


def run(
    quick: bool, only: list[str] | None, memory: bool, names: list[str] | None = None
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    print_header()
    for group, make in WORKLOAD_GROUPS.items():
        if only is not None and group not in only:
            continue
        try:
            workloads = make(quick)
        except ImportError as error:
            rows.append(
                {"workload": group, "configuration": "-", "status": f"unavailable ({error})"}
            )
            print_rows(rows[-1:])
            continue
        for workload in workloads:
            if names is not None and workload.name not in names:
                continue
            results = time_workload(workload)
            if memory and workload.measure_memory:
                for name, peak in measure_peak_memory(group, workload, quick).items():
                    results[name].peak_bytes = peak
            base = results[workload.baseline]
            if base.status != "ok":
                base = Measurement(wall_s=float("nan"), cpu_s=float("nan"))
            for name, result in results.items():
                rows.append(
                    {
                        "workload": workload.name,
                        "configuration": name,
                        "status": result.status,
                        "wall_ms": result.wall_s * 1e3,
                        "cpu_ms": result.cpu_s * 1e3,
                        "ratio": _ratio(result.wall_s, base.wall_s),
                        "cpu_ratio": _ratio(result.cpu_s, base.cpu_s),
                        "peak_mib": result.peak_bytes / 2**20,
                        "peak_ratio": _ratio(result.peak_bytes, base.peak_bytes),
                        "target": workload.targets.get(name, ""),
                    }
                )
            print_rows(rows[-len(results) :])
    return rows


def _ratio(value: float, base: float) -> float:
    return value / base if base > 0.0 else float("nan")


def _number(value: object, digits: int) -> str:
    if not isinstance(value, float) or value != value:
        return "-"
    return f"{value:.{digits}f}"


def print_header() -> None:
    print(
        f"{'workload':<30}{'configuration':<28}{'wall ms':>10}{'cpu ms':>10}{'ratio':>8}"
        f"{'peak MiB':>10}{'×base':>9}  target"
    )


def print_rows(rows: list[dict[str, object]]) -> None:
    for row in rows:
        if row["status"] != "ok":
            print(f"{row['workload']!s:<30}{row['configuration']!s:<28}  {row['status']}")
            continue
        print(
            f"{row['workload']!s:<30}{row['configuration']!s:<28}"
            f"{_number(row['wall_ms'], 2):>10}{_number(row['cpu_ms'], 2):>10}"
            f"{_number(row['ratio'], 2):>8}{_number(row['peak_mib'], 1):>10}"
            f"{_number(row['peak_ratio'], 2):>9}  {row['target']}"
        )
    sys.stdout.flush()


# A competing job: matrix products on torch's default number of threads, forever.
_COMPETITOR = (
    "import torch\na = torch.randn(256, 256) / 16\nwhile True:\n    a = torch.tanh(a @ a)\n"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(WORKLOAD_GROUPS)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument(
        "--workloads",
        help="semicolon-separated names of workloads to run (e.g. 'UPGradWeighting m=64')",
    )
    parser.add_argument(
        "--compete",
        type=int,
        default=0,
        metavar="N",
        help="N competing torch processes (matrix products on all cores) during the run, as "
        "data-loader workers or a second job would be",
    )
    parser.add_argument("--child", nargs=3, metavar=("GROUP", "WORKLOAD", "CONFIGURATION"))
    arguments = parser.parse_args(argv)
    if arguments.child is not None:
        print(peak_memory_child(*arguments.child, quick=arguments.quick))
        return
    only = arguments.only.split(",") if arguments.only else None
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quick={arguments.quick}")
    names = arguments.workloads.split(";") if arguments.workloads else None
    competitors = [
        subprocess.Popen([sys.executable, "-c", _COMPETITOR]) for _ in range(arguments.compete)
    ]
    try:
        rows = run(arguments.quick, only, memory=not arguments.no_memory, names=names)
    finally:
        for competitor in competitors:
            competitor.kill()
            competitor.wait()
    print(f"total {time.perf_counter() - start:.1f} s")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
