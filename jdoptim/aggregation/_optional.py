"""Imports of optional dependencies, failing with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module_name: str, *, extra: str, user: str) -> ModuleType:
    """Returns the module ``module_name``, or raises ``ImportError`` naming the jdoptim extra.

    Args:
        module_name: the module to import, e.g. ``"cvxpy"``.
        extra: the extra of jdoptim that installs it, e.g. ``"cagrad"``.
        user: the object that needs it, named in the error message.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"{user} needs the optional dependency `{module_name}`, which is not installed. "
            f'Install it with: pip install "jdoptim[{extra}]"'
        ) from error
