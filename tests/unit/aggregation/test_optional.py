"""Optional dependencies: importing works without them, constructing names the extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jdoptim.aggregation._optional import require

REPOSITORY = Path(__file__).resolve().parents[3]


def test_require_returns_the_module() -> None:
    assert require("math", extra="none", user="test").sqrt(4.0) == 2.0


def test_require_names_the_module_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cvxpy", None)

    with pytest.raises(ImportError, match=r'CAGrad needs .*`cvxpy`.*pip install "jdoptim\[x\]"'):
        require("cvxpy", extra="x", user="CAGrad")


def test_package_imports_without_the_optional_dependencies() -> None:
    script = (
        "import sys\n"
        "sys.modules['cvxpy'] = None\n"
        "sys.modules['ecos'] = None\n"
        "import jdoptim.aggregation as aggregation\n"
        "for make in (lambda: aggregation.CAGrad(0.5), lambda: aggregation.NashMTL(2)):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as error:\n"
        "        print(error)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}

    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPOSITORY,
        timeout=120,
        check=True,
    )

    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert 'pip install "jdoptim[cagrad]"' in lines[0]
    assert 'pip install "jdoptim[nash_mtl]"' in lines[1]
