"""Small validation and numerical helpers shared by the aggregators."""

from __future__ import annotations

import torch
from torch import Tensor


def check_non_negative(name: str, value: float) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is a finite number ``>= 0``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number, but got {type(value).__name__}.")
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number >= 0, but got {value!r}.")


def check_pref_vector(pref_vector: Tensor | None) -> None:
    """Checks at construction that a preference vector is a 1-D floating tensor (or None)."""
    if pref_vector is None:
        return
    if not isinstance(pref_vector, Tensor):
        raise TypeError(
            f"`pref_vector` must be a torch.Tensor or None, but got {type(pref_vector).__name__}."
        )
    if pref_vector.dim() != 1:
        raise ValueError(
            f"`pref_vector` must be a 1-D tensor, but got shape {list(pref_vector.shape)}."
        )


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
