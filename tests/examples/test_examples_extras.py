"""`pip install ".[full,examples]"`, which the examples' pages tell users to run, covers every
package that the examples import."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Import names whose distribution has another name.
DISTRIBUTIONS = {"sklearn": "scikit-learn"}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names}


def test_the_examples_extra_covers_the_imports_of_every_example() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [
        *project["dependencies"],
        *project["optional-dependencies"]["full"],
        *project["optional-dependencies"]["examples"],
    ]
    installed = {"jdoptim"} | {
        re.split(r"[<>=!~;\[ ]", requirement)[0].lower() for requirement in requirements
    }
    missing = {
        f"{path.name}: {name}"
        for path in sorted((ROOT / "examples").glob("*.py"))
        for name in imported_packages(path)
        if DISTRIBUTIONS.get(name, name).lower() not in installed
    }
    assert missing == set()
