"""Smoke test of ``benchmarks/distributed_sharded.py`` on a small MLP: every path runs and the
traffic is ordered as designed (no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import distributed_sharded


@pytest.mark.timeout(200)
def test_every_path_runs_and_sharding_halves_the_traffic() -> None:
    result = distributed_sharded.run([8], warmup=0, steps=1, width=64)
    reduced = result["m=8/all-reduce"]["bytes_sent"]
    sharded = result["m=8/sharded"]["bytes_sent"]
    gramian = result["m=8/gramian"]["bytes_sent"]
    n = result["m=8/sharded"]["parameters"]
    # All-reduce: 2·(R-1)/R of the [m, N] float32 buffer = m·N·4 bytes for two ranks.
    assert reduced >= 8 * n * 4
    # Sharded: half of the Jacobian, half of the update, and the Gramian: about half.
    assert sharded < 0.6 * reduced
    # Gramian mode sends activations and one gradient, not the Jacobian.
    assert gramian < reduced / 2
