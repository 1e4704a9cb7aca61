"""The docstring examples print nothing that sits on a rounding edge.

A value computed by cancellation (an exact 0 that comes out as -5.9605e-08 on another BLAS), or
one whose printed digits depend on the last bit of a float32, makes the doctests fail on some
machines only. Running every example a second time with float64 as the default dtype moves all
those last bits: an example whose output is robust prints the same thing in both precisions.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from collections.abc import Iterator

import pytest
import torch

import jdoptim

# The packages whose examples are checked here. ``jdoptim.optim`` and ``jdoptim.autojac`` are
# being rewritten; they join the list once they are.
PACKAGES = ["jdoptim.aggregation", "jdoptim.autogram", "jdoptim._deprecated"]

# Examples whose output depends on the default dtype by design, not by rounding.
DTYPE_DEPENDENT = {
    # The uniform draws that decide which entries are kept are made in the matrix's dtype.
    "jdoptim.aggregation._graddrop.GradDrop": "draws its thresholds in the matrix's dtype",
}

_DTYPE = re.compile(r",\s*dtype=torch\.float(32|64)")


class _DtypeBlindChecker(doctest.OutputChecker):
    """Compares outputs without their ``dtype=torch.float32/64`` suffixes (the default dtype
    decides which of the two torch leaves out)."""

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return super().check_output(_DTYPE.sub("", want), _DTYPE.sub("", got), optionflags)


def _modules() -> Iterator[str]:
    for name in PACKAGES:
        module = importlib.import_module(name)
        yield name
        if hasattr(module, "__path__"):
            for info in pkgutil.walk_packages(module.__path__, f"{name}."):
                yield info.name


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    tests = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional dependency
            continue
        tests.extend(test for test in finder.find(module) if test.examples)
    return sorted({test.name: test for test in tests}.values(), key=lambda test: test.name)


DOCTESTS = _doctests()


def test_the_examples_are_found() -> None:
    names = {test.name for test in DOCTESTS}
    assert "jdoptim.aggregation._mgda.MGDA" in names
    assert "jdoptim.autogram._engine.Engine" in names
    assert len(DOCTESTS) >= 30
    assert jdoptim.__name__ == "jdoptim"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("test", DOCTESTS, ids=lambda test: test.name)
def test_example_prints_the_same_in_both_precisions(
    test: doctest.DocTest, dtype: torch.dtype
) -> None:
    if dtype == torch.float64 and test.name in DTYPE_DEPENDENT:
        pytest.skip(DTYPE_DEPENDENT[test.name])
    runner = doctest.DocTestRunner(checker=_DtypeBlindChecker(), optionflags=doctest.ELLIPSIS)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    try:
        # A copy of the globals, so that the two runs do not share the names they define.
        copy = doctest.DocTest(
            test.examples, dict(test.globs), test.name, test.filename, test.lineno, test.docstring
        )
        messages: list[str] = []
        result = runner.run(copy, out=messages.append, clear_globs=True)
    finally:
        torch.set_default_dtype(previous)
    assert result.failed == 0, "".join(messages)
