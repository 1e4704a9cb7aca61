"""Every public name of jdoptim is documented in docs/ and has a runnable docstring example."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PACKAGES = [
    "jdoptim",
    "jdoptim.aggregation",
    "jdoptim.autojac",
    "jdoptim.autogram",
    "jdoptim.optim",
    "jdoptim.scalarization",
]


def import_or_skip(package: str) -> ModuleType:
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as error:
        if error.name != package:
            raise
        pytest.skip(f"{package} does not exist yet")
    if getattr(module, "__file__", None) is None:  # an empty folder: a namespace package
        pytest.skip(f"{package} does not exist yet")
    return module


def documented_text() -> str:
    pages = sorted([*DOCS.rglob("*.md"), *DOCS.rglob("*.rst")])
    return "\n".join(p.read_text(encoding="utf-8") for p in pages if "_build" not in p.parts)


def public_objects(package: str) -> list[tuple[str, object]]:
    module = import_or_skip(package)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{package} has no __all__"
    return [(name, getattr(module, name)) for name in names]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_appears_in_the_docs(package: str) -> None:
    # The qualified name, as an autodoc directive or a cross-reference writes it.
    text = documented_text()
    missing = [
        name
        for name, _ in public_objects(package)
        if not re.search(rf"(?<![\w.]){re.escape(f'{package}.{name}')}(?![\w])", text)
    ]
    assert missing == [], f"{package}: no docs page mentions {missing}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_object_has_a_docstring_example(package: str) -> None:
    missing = []
    for name, obj in public_objects(package):
        if inspect.ismodule(obj):
            continue  # subpackages are documented by their own objects
        docstring = inspect.getdoc(obj) or ""
        if ">>>" not in docstring:
            missing.append(name)
    assert missing == [], f"{package}: no `>>>` example in the docstring of {missing}"
