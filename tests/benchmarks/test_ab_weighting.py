"""`benchmarks/ab_weighting.py`: two versions of the package alternated in one process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("processes", [[], ["--processes", "1"]])
def test_one_row_per_size_with_both_medians_and_their_ratio(processes: list[str]) -> None:
    # This checkout against itself, in one process or one process per version and size: both
    # versions import, and each row holds two medians.
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ab_weighting.py"),
            str(ROOT / "jdoptim"),
            "--sizes",
            "6x3",
            "30x60",
            "--threads",
            "1",
            *processes,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = result.stdout.strip().splitlines()
    assert rows[0].startswith("| `[m, n]` | before (ms) | after (ms) | after / before |")
    pattern = r"\| \[(\d+), (\d+)\] \| [0-9.e+]+ \| [0-9.e+]+ \| [0-9.]+ \|"
    sizes = [re.fullmatch(pattern, row) for row in rows[2:]]
    assert [(match.group(1), match.group(2)) for match in sizes if match] == [
        ("6", "3"),
        ("30", "60"),
    ]
