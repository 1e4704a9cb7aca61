"""Sphinx configuration of the jdoptim documentation."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jdoptim  # noqa: E402

project = "jdoptim"
author = "jdoptim developers"
copyright = "2026, jdoptim developers"
release = jdoptim.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "guide/results"]

# Markdown: $...$ maths, ::: fences and anchors for headings.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Google-style docstrings ("Args:", "Returns:", "Example:").
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_inherit_docstrings = False
autodoc_default_options = {"show-inheritance": True}

# Every ``>>>`` example of a docstring pulled in by autodoc is a doctest block: test them all,
# in the default group (one namespace per page).
doctest_test_doctest_blocks = "default"
doctest_global_setup = """
import torch
torch.manual_seed(0)
"""

html_theme = "furo"
html_title = "jdoptim"
html_static_path = ["_static"]
