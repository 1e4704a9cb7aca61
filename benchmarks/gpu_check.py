"""The GPU rows of the performance suite, in one short run on a CUDA machine.

Writes one Markdown table (and prints it): each row a workload on the device, its median time,
the time of its baseline, their ratio, and the peak device memory over the baseline's where it
means something. Rows:

- ``UPGradWeighting m`` (m = 64 … 1024, G from a ``[m, 1000]`` Jacobian, the torch solver): on
  the device against the same weighting on the CPU, with the CPU targets of the suite;
- ``IWRM CNN batch=64``: the steps of ``autogram_iwrm.py`` (autogram, autojac with the default
  arguments, autojac with one backward pass per row) against the summed-loss step;
- ``feature-level multi-task`` (MLP trunk 4×512, m = 8, batch 64): ``JacobianOptimizer.step``
  with ``aggregate_at="features"`` against the summed-loss step; reported as ``absent`` when the
  optimizer has no such mode;
- ``torch.compile``: three ``JacobianOptimizer`` steps on an inductor-compiled trunk against the
  same steps run eagerly (after a warm-up step that compiles), with the largest difference of
  the parameters between the two.

``--dry-run`` runs every row on the CPU with tiny sizes, one repeat and the ``aot_eager``
backend: it checks that the script works, its figures mean nothing. Run it through
``benchmarks/gpu_check.sh``, which also runs the CUDA tests.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

# The targets of the suite for UPGradWeighting (full-rank and rank-deficient Gramians).
WEIGHTING_TARGETS_MS = {64: 3.0, 128: 12.0, 256: 60.0, 512: 250.0, 1024: 1500.0}


@dataclass
class Row:
    workload: str
    configuration: str
    time_ms: float
    baseline_ms: float
    memory_ratio: float = float("nan")
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.time_ms / self.baseline_ms if self.baseline_ms > 0 else float("nan")


def median_ms(step: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The median wall time of ``step`` in milliseconds, after one warm-up call."""

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_bytes(step: Callable[[], object], device: torch.device) -> float:
    """The peak device memory allocated during one call of ``step`` (NaN on the CPU)."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - before)


def weighting_rows(device: torch.device, sizes: list[int], repeats: int) -> list[Row]:
    from jdoptim.aggregation import UPGradWeighting

    rows = []
    for m in sizes:
        generator = torch.Generator().manual_seed(m)
        jacobian = torch.randn(m, 1000, generator=generator)
        gramian = jacobian @ jacobian.T
        weighting = UPGradWeighting(solver="torch")
        on_device = gramian.to(device)
        cpu_ms = median_ms(lambda w=weighting, g=gramian: w(g), torch.device("cpu"), repeats)
        device_ms = median_ms(lambda w=weighting, g=on_device: w(g), device, repeats)
        target = WEIGHTING_TARGETS_MS.get(m)
        rows.append(
            Row(
                f"UPGradWeighting m={m}",
                f"torch solver on {device.type}",
                device_ms,
                cpu_ms,
                target=f"≤ {target:g} ms" if target is not None else "",
                note="baseline: the same on the CPU",
            )
        )
    return rows


def iwrm_rows(device: torch.device, batch: int, repeats: int) -> list[Row]:
    sys.path.insert(0, str(Path(__file__).parent))
    import autogram_iwrm

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    steps = {}
    for configuration in ("summed", "autogram", "autojac", "autojac_loop"):
        torch.manual_seed(0)
        model = autogram_iwrm.make_cnn().to(device)
        step = autogram_iwrm.make_step(configuration, model)
        steps[configuration] = lambda step=step: step(x, y)
    times = {c: median_ms(s, device, repeats) for c, s in steps.items()}
    memory = {c: peak_bytes(s, device) for c, s in steps.items()}
    targets = {"autogram": "≤ 3 (memory ≤ 1.5)", "autojac": "≤ 30 (memory ≤ 5)"}
    return [
        Row(
            f"IWRM CNN batch={batch}",
            c,
            times[c],
            times["summed"],
            memory[c] / memory["summed"] if memory["summed"] > 0 else float("nan"),
            targets.get(c, ""),
        )
        for c in steps
    ]


class MultiHeadMLP(nn.Module):
    """A trunk of 4 hidden layers and one linear head per loss."""

    def __init__(self, m: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = 64
        for _ in range(4):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(m))

    def losses(self, x: Tensor, y: Tensor, trunk: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        features = (trunk or self.trunk)(x)
        losses = [
            ((h(features).squeeze(1) - y[:, i]) ** 2).mean() for i, h in enumerate(self.heads)
        ]
        return features, torch.stack(losses)


def feature_level_rows(device: torch.device, m: int, width: int, repeats: int) -> list[Row]:
    from jdoptim import JacobianOptimizer

    name = f"feature-level multi-task m={m}"
    if "aggregate_at" not in inspect.signature(JacobianOptimizer.step).parameters:
        return [Row(name, "aggregate_at='features'", float("nan"), float("nan"), note="absent")]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, generator=generator).to(device)
    y = torch.randn(64, m, generator=generator).to(device)
    torch.manual_seed(0)
    model = MultiHeadMLP(m, width).to(device)
    summed_optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    optimizer = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3))

    def summed() -> None:
        summed_optimizer.zero_grad()
        model.losses(x, y)[1].sum().backward()
        summed_optimizer.step()

    def feature_level() -> None:
        optimizer.zero_grad()
        features, losses = model.losses(x, y)
        optimizer.step(list(losses), features=features, aggregate_at="features")

    base = median_ms(summed, device, repeats)
    return [
        Row(
            name,
            "aggregate_at='features'",
            median_ms(feature_level, device, repeats),
            base,
            target="≤ 1.6",
        )
    ]


def compile_rows(device: torch.device, backend: str, width: int, repeats: int) -> list[Row]:
    from jdoptim import JacobianOptimizer

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, generator=generator).to(device)
    y = torch.randn(64, 8, generator=generator).to(device)
    torch.manual_seed(0)
    eager = MultiHeadMLP(8, width).to(device)
    twin = copy.deepcopy(eager)
    compiled_trunk = torch.compile(twin.trunk, backend=backend)

    def stepper(model: MultiHeadMLP, trunk: nn.Module | None) -> Callable[[], None]:
        optimizer = JacobianOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3))

        def step() -> None:
            optimizer.zero_grad()
            optimizer.step(model.losses(x, y, trunk)[1])

        return step

    eager_step, compiled_step = stepper(eager, None), stepper(twin, compiled_trunk)
    start = time.perf_counter()
    compiled_step()  # compiles
    compile_s = time.perf_counter() - start
    eager_step()
    for _ in range(3):
        eager_step()
        compiled_step()
    difference = max(
        (p - q).abs().max().item()
        for p, q in zip(eager.parameters(), twin.parameters(), strict=True)
    )
    return [
        Row(
            "torch.compile MLP m=8",
            f"JacobianOptimizer, {backend}",
            median_ms(compiled_step, device, repeats),
            median_ms(eager_step, device, repeats),
            note=(
                f"baseline: eager; compile {compile_s:.1f} s; "
                f"largest parameter difference {difference:.1e}"
            ),
        )
    ]


def table(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| workload | configuration | ms | baseline ms | ratio | memory × | target | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row.workload,
            row.configuration,
            f"{row.time_ms:.2f}",
            f"{row.baseline_ms:.2f}",
            f"{row.ratio:.2f}",
            "" if row.memory_ratio != row.memory_ratio else f"{row.memory_ratio:.2f}",
            row.target,
            row.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--output", default="gpu_check.md", help="the Markdown table")
    arguments = parser.parse_args(argv)
    if arguments.dry_run:
        device, backend = torch.device("cpu"), "aot_eager"
        sizes, batch, width, repeats = [4, 8], 4, 16, 1
    elif torch.cuda.is_available():
        device, backend = torch.device("cuda"), "inductor"
        sizes, batch, width, repeats = list(WEIGHTING_TARGETS_MS), 64, 512, 5
    else:
        print("gpu_check: no CUDA device; nothing to measure (use --dry-run to test the script).")
        return 0
    header = (
        f"torch {torch.__version__}, device "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu (dry run)'}"
    )
    rows: list[Row] = []
    parts: list[tuple[str, Callable[[], list[Row]]]] = [
        ("weighting", lambda: weighting_rows(device, sizes, repeats)),
        ("iwrm", lambda: iwrm_rows(device, batch, repeats)),
        ("feature-level", lambda: feature_level_rows(device, 8, width, repeats)),
        ("compile", lambda: compile_rows(device, backend, width, repeats)),
    ]
    failed = False
    for name, part in parts:
        start = time.perf_counter()
        try:
            rows += part()
        except Exception as error:  # one failing part must not hide the others
            failed = True
            rows.append(Row(name, "failed", float("nan"), float("nan"), note=repr(error)[:200]))
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    text = table(rows, header)
    Path(arguments.output).write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
