"""Small validation and numerical helpers shared by the aggregators."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor


def check_non_negative(name: str, value: float) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is a finite number ``>= 0``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number, but got {type(value).__name__}.")
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number >= 0, but got {value!r}.")


def check_vector(name: str, vector: Tensor) -> None:
    """Checks a per-row vector (``pref_vector``, ``weights``, ``leak``): a 1-D tensor of finite
    values.

    A NaN or an infinity would only show at the first aggregation, as an all-zero update
    (ConFIG) or as a non-finite one blamed on the gradients: it is refused here, when the
    vector is given, with a ``ValueError`` naming it.
    """
    if not isinstance(vector, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, but got {type(vector).__name__}.")
    if vector.dim() != 1:
        raise ValueError(f"`{name}` must be a 1-D tensor, but got shape {list(vector.shape)}.")
    if not bool(torch.isfinite(vector).all()):
        raise ValueError(f"`{name}` must contain only finite values, but got {vector!r}.")


def check_pref_vector(pref_vector: Tensor | None) -> None:
    """Checks a preference vector (or None): a 1-D tensor of finite values."""
    if pref_vector is None:
        return
    if not isinstance(pref_vector, Tensor):
        raise TypeError(
            f"`pref_vector` must be a torch.Tensor or None, but got {type(pref_vector).__name__}."
        )
    check_vector("pref_vector", pref_vector)


class CheckedVectors:
    """Mixin for the modules whose per-row vectors are settable buffers: assigning one (e.g.
    ``aggregator.pref_vector = torch.tensor([1.0, nan])``) goes through :func:`check_vector`
    too, so that a bad vector is refused where it is set, not at the next aggregation.

    ``_checked_vectors`` maps each such attribute to whether it may be ``None``.
    """

    _checked_vectors: ClassVar[dict[str, bool]] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._checked_vectors:
            if value is None:
                if not self._checked_vectors[name]:
                    raise TypeError(f"`{name}` must be a torch.Tensor, but got NoneType.")
            else:
                check_vector(name, value)
        super().__setattr__(name, value)


def resolve_per_row(vector: Tensor | None, name: str, matrix: Tensor, default: float) -> Tensor:
    """Returns the ``[m]`` vector ``name`` for ``matrix`` (a Jacobian ``[m, n]`` or a Gramian
    ``[m, m]``), on its device and dtype.

    ``None`` becomes ``default`` repeated m times. A vector whose length differs from m raises
    ``ValueError``.
    """
    m = matrix.shape[0]
    if vector is None:
        return matrix.new_full((m,), default)
    if vector.shape[0] != m:
        raise ValueError(
            f"`{name}` must have one entry per row of the matrix (m = {m}), but got shape "
            f"{list(vector.shape)} for an input of shape {list(matrix.shape)}."
        )
    return vector.to(device=matrix.device, dtype=matrix.dtype)


def resolve_pref_vector(pref_vector: Tensor | None, gramian: Tensor, default: float) -> Tensor:
    """Returns the ``[m]`` preference vector for ``gramian`` ``[m, m]``: ``pref_vector``, or
    ``default`` repeated m times (``1/m`` for a uniform mean: pass ``1 / m``)."""
    return resolve_per_row(pref_vector, "pref_vector", gramian, default)


def normalize(gramian: Tensor, norm_eps: float) -> Tensor:
    """``G / tr(G)`` when ``tr(G) >= norm_eps``, else the zero matrix (as the reference
    implementation of UPGrad normalises).

    A zero trace gives the zero matrix even with ``norm_eps = 0`` (never ``0 / 0``); a
    non-finite entry of ``G`` stays non-finite.
    """
    trace = gramian.trace()
    keep = (trace >= norm_eps) & (trace > 0)
    # torch.where keeps this free of a host synchronisation on accelerators.
    return (gramian / torch.where(keep, trace, 1.0)) * keep


def pref_repr(pref_vector: Tensor | None) -> str:
    """A short printable form of a preference vector for ``repr``/``str``."""
    if pref_vector is None:
        return "None"
    return repr([round(v, 4) for v in pref_vector.tolist()]).replace(" ", "")
