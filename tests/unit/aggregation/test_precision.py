"""Float32 inputs give the float64 result to float32 accuracy.

The aggregators that decide a rank (IMTL-G's pseudo-inverse, Aligned-MTL's eigenvalue cut,
ConFIG's pseudo-inverse) must decide it at the precision of their input: in a float32 Gramian,
the eigenvalues of the null space are rounding noise of order ``ε(float32)·max(λ)``, which a
float64 cut-off would keep and invert.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _matrices import seeds
from hypothesis import assume, given, note
from hypothesis import strategies as st
from torch import Tensor

from jdoptim.aggregation import AlignedMTLWeighting, ConFIG, IMTLGWeighting

#: The smallest ratio λ_r / λ_1 of the non-zero eigenvalues of J Jᵀ kept in the tests: below it,
#: float32 loses more digits to the conditioning than the tolerance allows.
MIN_EIGENVALUE_RATIO = 1e-2
#: Relative tolerance on the weights, for κ(J Jᵀ restricted to its range) ≤ 1e2: a float32
#: computation loses about κ·ε(float32) ≈ 1e-5 relative.
RTOL = 1e-4


@st.composite
def rank_deficient_jacobians(draw: st.DrawFn) -> Tensor:
    """A float64 ``[m, n]`` Jacobian ``A @ B`` of rank ``r < m``, well conditioned on its range."""
    m = draw(st.integers(min_value=2, max_value=6))
    r = draw(st.integers(min_value=1, max_value=m - 1))
    n = draw(st.integers(min_value=r + 1, max_value=10))
    generator = torch.Generator().manual_seed(draw(seeds))
    a = torch.randn(m, r, generator=generator, dtype=torch.float64)
    b = torch.randn(r, n, generator=generator, dtype=torch.float64)
    jacobian = a @ b
    eigenvalues = torch.linalg.eigvalsh(jacobian @ jacobian.T)
    assume(bool(eigenvalues[-r] >= MIN_EIGENVALUE_RATIO * eigenvalues[-1]))
    return jacobian


def _imtlg_weights(jacobian: Tensor) -> tuple[Tensor, float]:
    # w = v / Σv: the scale of the weights is that of v / Σv; skip the Jacobians for which v
    # nearly sums to zero, where w is only as accurate as that cancellation.
    gramian = jacobian @ jacobian.T
    gramian = gramian / gramian.trace()
    v = torch.linalg.pinv(gramian, rtol=1e-8, hermitian=True) @ gramian.diagonal().sqrt()
    assume(bool(v.sum().abs() >= 0.1 * v.abs().sum()))
    weights = IMTLGWeighting()(jacobian @ jacobian.T)
    return weights, float(weights.abs().max())


def _aligned_mtl_weights(jacobian: Tensor) -> tuple[Tensor, float]:
    # w = B p with ‖B‖ = 1 (the kept eigenvalues are ≥ s): the scale of w is ‖p‖, even when
    # B p is much smaller by cancellation.
    m = jacobian.shape[0]
    return AlignedMTLWeighting()(jacobian @ jacobian.T), m**-0.5


def _config_output(jacobian: Tensor) -> tuple[Tensor, float]:
    # The output is (Σ gᵢ·d) d with ‖d‖ = 1: its scale is that of the rows.
    return ConFIG()(jacobian), float(jacobian.norm(dim=1).sum())


@pytest.mark.parametrize(
    "compute",
    [_imtlg_weights, _aligned_mtl_weights, _config_output],
    ids=["IMTLGWeighting", "AlignedMTLWeighting", "ConFIG"],
)
@given(jacobian=rank_deficient_jacobians())
def test_float32_agrees_with_float64_on_rank_deficient_jacobians(
    compute: Callable[[Tensor], tuple[Tensor, float]], jacobian: Tensor
) -> None:
    reference, scale = compute(jacobian)
    result = compute(jacobian.float())[0].double()

    note(f"float64: {reference.tolist()}\nfloat32: {result.tolist()}")
    assert bool(((result - reference).abs() <= RTOL * scale).all())


def test_imtlg_float32_on_the_reported_rank_2_jacobian() -> None:
    # A [4, 3] Jacobian of rank 2: float32 used to give weights made of rounding noise.
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(4, 2, generator=generator, dtype=torch.float64) @ torch.randn(
        2, 3, generator=generator, dtype=torch.float64
    )

    reference = IMTLGWeighting()(jacobian @ jacobian.T)
    single = jacobian.float()
    result = IMTLGWeighting()(single @ single.T)

    torch.testing.assert_close(result.double(), reference, rtol=0, atol=1e-4)
