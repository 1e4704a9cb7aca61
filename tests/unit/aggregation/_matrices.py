"""Hypothesis strategies for the Jacobians that the aggregation property tests run on.

Every matrix is built by torch from a seed drawn by hypothesis, so a failing example is
reproducible and hypothesis can still shrink it (towards small shapes, seed 0 and unit scales).
The matrices are generated in float64 and cast to the requested dtype at the end.

Kinds of matrices:

- ``full_rank_matrices``: standard normal entries (rank ``min(m, n)`` almost surely);
- ``deficient_rank_matrices``: ``A @ B`` with ``A`` ``[m, r]``, ``B`` ``[r, n]``, ``r < min(m, n)``;
- ``zero_matrices``: all zeros;
- ``strongly_stationary_matrices``: a strictly positive combination of the rows vanishes;
- ``non_strongly_stationary_matrices``: some ``d`` has ``J d ≥ 0`` and ``J d ≠ 0``, which by
  Stiemke's lemma is exactly "no strictly positive combination of the rows vanishes";
- ``matrices``: any of the above, with rows optionally rescaled by ``0`` or ``1e-10 … 1e15``.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import Tensor

MAX_M = 32
MAX_N = 200

#: The [2, 3] Jacobian whose aggregations by every method are known reference values (the same
#: matrix and numbers as the reference implementation of Jacobian descent).
REFERENCE_JACOBIAN = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

#: Factors a row may be multiplied by; hypothesis shrinks towards the first one.
ROW_SCALES = (1.0, 0.0, 1e-10, 1e-5, 1e-2, 1e2, 1e5, 1e10, 1e15)
POSITIVE_ROW_SCALES = tuple(scale for scale in ROW_SCALES if scale > 0.0)

seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _low_rank(generator: torch.Generator, m: int, n: int, rank: int) -> Tensor:
    """A random ``[m, n]`` matrix of rank ``rank`` (almost surely)."""
    return _randn(generator, m, rank) @ _randn(generator, rank, n)


def _draw_row_scales(draw: st.DrawFn, m: int, choices: tuple[float, ...]) -> Tensor:
    """``[m]`` factors: a drawn number of rows (chosen by a seeded permutation) get a factor of
    ``choices[1:]``, the others ``choices[0] = 1``. Few draws, so generation stays fast."""
    scales = torch.ones(m, dtype=torch.float64)
    n_rescaled = draw(st.integers(min_value=0, max_value=m))
    if n_rescaled == 0:
        return scales
    generator = _generator(draw(seeds))
    rows = torch.randperm(m, generator=generator)[:n_rescaled]
    picks = torch.randint(1, len(choices), (n_rescaled,), generator=generator)
    scales[rows] = torch.tensor(choices, dtype=torch.float64)[picks]
    return scales


def _draw_shape(draw: st.DrawFn, min_m: int, max_m: int, min_n: int, max_n: int) -> tuple[int, int]:
    m = draw(st.integers(min_value=min_m, max_value=max_m))
    n = draw(st.integers(min_value=min_n, max_value=max_n))
    return m, n


@st.composite
def full_rank_matrices(
    draw: st.DrawFn, min_m: int = 1, max_m: int = MAX_M, max_n: int = MAX_N
) -> Tensor:
    """Standard normal ``[m, n]`` matrices, float64."""
    m, n = _draw_shape(draw, min_m, max_m, 1, max_n)
    return _randn(_generator(draw(seeds)), m, n)


@st.composite
def deficient_rank_matrices(
    draw: st.DrawFn, min_m: int = 2, max_m: int = MAX_M, max_n: int = MAX_N
) -> Tensor:
    """Products ``[m, r] @ [r, n]`` with ``1 ≤ r < min(m, n)``, float64."""
    m, n = _draw_shape(draw, max(min_m, 2), max_m, 2, max_n)
    rank = draw(st.integers(min_value=1, max_value=min(m, n) - 1))
    return _low_rank(_generator(draw(seeds)), m, n, rank)


@st.composite
def zero_matrices(
    draw: st.DrawFn, min_m: int = 1, max_m: int = MAX_M, max_n: int = MAX_N
) -> Tensor:
    """All-zero ``[m, n]`` matrices, float64."""
    m, n = _draw_shape(draw, min_m, max_m, 1, max_n)
    return torch.zeros(m, n, dtype=torch.float64)


@st.composite
def strongly_stationary_matrices(
    draw: st.DrawFn,
    min_m: int = 2,
    max_m: int = MAX_M,
    max_n: int = MAX_N,
    scaled: bool = True,
) -> Tensor:
    """Matrices with a strictly positive ``λ`` such that ``λᵀ J = 0``, float64.

    The first ``m - 1`` rows are random (in a subspace of random dimension, so the matrix may be
    rank-deficient); the last is ``-(Σ λᵢ gᵢ) / λₘ`` for positive ``λ``; rows are then shuffled
    and, unless ``scaled=False``, rescaled by positive factors (which keeps a positive vanishing
    combination: ``λᵢ / cᵢ``). With ``m - 1 = 1`` this gives the pair ``g, -c g``.
    """
    m, n = _draw_shape(draw, max(min_m, 2), max_m, 1, max_n)
    rank = draw(st.integers(min_value=1, max_value=min(m - 1, n)))
    generator = _generator(draw(seeds))
    others = _low_rank(generator, m - 1, n, rank)
    coefficients = torch.rand(m, generator=generator, dtype=torch.float64) + 0.1
    last = -(coefficients[:-1] @ others) / coefficients[-1]
    matrix = torch.cat([others, last.unsqueeze(0)])
    matrix = matrix[torch.randperm(m, generator=generator)]
    if not scaled:
        return matrix
    return matrix * _draw_row_scales(draw, m, POSITIVE_ROW_SCALES).unsqueeze(1)


@st.composite
def non_strongly_stationary_matrices(
    draw: st.DrawFn,
    min_m: int = 1,
    max_m: int = MAX_M,
    max_n: int = MAX_N,
    scaled: bool = True,
) -> Tensor:
    """Matrices with a unit ``d`` such that ``J d ≥ 0`` and ``J d ≠ 0``, float64.

    Each row is a random vector with its component along ``d`` replaced by ``aᵢ ≥ 0``; some
    ``aᵢ`` may be zero (rows orthogonal to ``d``, e.g. conflicting pairs ``g, -g``), at least one
    is positive. Unless ``scaled=False``, rows are rescaled by ``0`` or ``1e-10 … 1e15``, keeping
    one row with a positive ``aᵢ`` non-zero. No strictly positive combination of the rows can
    vanish, since its inner product with ``d`` is positive.
    """
    m, n = _draw_shape(draw, min_m, max_m, 1, max_n)
    rank = draw(st.integers(min_value=1, max_value=min(m, n)))
    generator = _generator(draw(seeds))
    direction = _randn(generator, n)
    direction = direction / direction.norm()
    rows = _low_rank(generator, m, n, rank)
    rows = rows - torch.outer(rows @ direction, direction)
    along = torch.rand(m, generator=generator, dtype=torch.float64) + 0.1
    n_orthogonal = draw(st.integers(min_value=0, max_value=m - 1))
    order = torch.randperm(m, generator=generator)
    along[order[:n_orthogonal]] = 0.0
    keep = order[n_orthogonal]
    matrix = rows + torch.outer(along, direction)
    if not scaled:
        return matrix
    scales = _draw_row_scales(draw, m, ROW_SCALES)
    if scales[keep] == 0.0:
        scales[keep] = 1.0
    return matrix * scales.unsqueeze(1)


@st.composite
def matrices(
    draw: st.DrawFn,
    min_m: int = 1,
    max_m: int = MAX_M,
    max_n: int = MAX_N,
    dtype: torch.dtype = torch.float32,
    scaled: bool = True,
) -> Tensor:
    """Any kind of test matrix, with rows possibly rescaled by ``0`` or ``1e-10 … 1e15``.

    ``min_m``/``max_m`` bound the number of rows (kinds that need two rows are skipped when
    ``max_m < 2``). With ``scaled=False`` the rows keep the scale of standard normal vectors.
    """
    unscaled_kinds: list[st.SearchStrategy[Tensor]] = [
        full_rank_matrices(min_m, max_m, max_n),
        zero_matrices(min_m, max_m, max_n),
    ]
    # These two rescale their rows themselves, in the ways that keep their defining property.
    self_scaled_kinds = [non_strongly_stationary_matrices(min_m, max_m, max_n, scaled)]
    if max_m >= 2:
        unscaled_kinds.append(deficient_rank_matrices(min_m, max_m, max_n))
        self_scaled_kinds.append(strongly_stationary_matrices(min_m, max_m, max_n, scaled))
    if draw(st.booleans()):
        matrix = draw(st.one_of(self_scaled_kinds))
    else:
        matrix = draw(st.one_of(unscaled_kinds))
        if scaled and draw(st.booleans()):
            matrix = matrix * _draw_row_scales(draw, matrix.shape[0], ROW_SCALES).unsqueeze(1)
    return matrix.to(dtype)


def random_jacobians() -> list[Tensor]:
    """Fixed float64 Jacobians, full and deficient rank, from [1, 1] to [32, 40] (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    jacobians = []
    for m, n in [(1, 1), (2, 1), (2, 5), (3, 3), (5, 2), (8, 20), (16, 4), (32, 40)]:
        jacobians.append(torch.randn(m, n, generator=generator, dtype=torch.float64))
        low_rank = max(1, min(m, n) // 2)
        left = torch.randn(m, low_rank, generator=generator, dtype=torch.float64)
        jacobians.append(left @ torch.randn(low_rank, n, generator=generator, dtype=torch.float64))
    return jacobians
