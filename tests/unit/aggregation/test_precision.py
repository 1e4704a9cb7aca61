"""Float32 inputs give the float64 result to float32 accuracy, at every scale.

The aggregators that decide a rank (IMTL-G's pseudo-inverse, Aligned-MTL's eigenvalue cut,
ConFIG's pseudo-inverse) must decide it at the precision of their input: in a float32 Gramian,
the eigenvalues of the null space are rounding noise of order ``ε(float32)·max(λ)``, which a
float64 cut-off would keep and invert.

The Gramian-weighted aggregators must give a finite result for a finite Jacobian whose aggregate
is representable, even when ``J Jᵀ`` itself is not (entries around 1e19 in float32), and the
result of the unscaled problem, rescaled: ``A(J) = s · A(J / s)``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _aggregators import (
    ALL_CASES,
    GRAMIAN_WEIGHTED,
    AggregatorCase,
    class_name,
    params,
)
from _matrices import seeds
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st
from torch import Tensor

from jdoptim.aggregation import (
    AlignedMTLWeighting,
    ConFIG,
    GramianWeightedAggregator,
    IMTLGWeighting,
)

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


def _rescaling(case: AggregatorCase) -> str:
    aggregator = case(4)
    if not isinstance(aggregator, GramianWeightedAggregator):
        return "none"
    return aggregator.gramian_weighting.gramian_rescaling


# Selected by what each weighting declares. "down": weights of G / tr(G) behind a threshold
# norm_eps on the trace, so a Jacobian so small that tr(G) < norm_eps is treated as zero by
# design, and A(J) = s · A(J / s) only holds at scales >= 1 with the default norm_eps. "any": the
# weights do not depend on the scale at all. Weightings that declare nothing (e.g. FairGrad,
# whose update scales as a power of s) are not rescaled and not tested here.
GRAMIAN_CASES = [case for case in ALL_CASES if class_name(case) in GRAMIAN_WEIGHTED]
ANY_SCALE_CASES = [case for case in GRAMIAN_CASES if _rescaling(case) == "any"]
LARGE_SCALE_CASES = [case for case in GRAMIAN_CASES if _rescaling(case) == "down"]

#: float32 scales, powers of two so that J / s is exact: from Jacobians whose Gramian is all
#: subnormal (< 2^-126 ≈ 1e-38) or zero, to Jacobians whose Gramian overflows (> 2^128 ≈ 3.4e38)
#: while the aggregate is still representable.
SMALL_SCALES = [2.0**-100, 2.0**-66, 2.0**-50]  # 7.9e-31, 1.4e-20, 8.9e-16
LARGE_SCALES = [1.0, 2.0**33, 2.0**63, 2.0**83, 2.0**120]  # 1, 8.6e9, 9.2e18, 9.7e24, 1.3e36


def _scale_invariance(case: AggregatorCase, seed: int, m: int, n: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    unscaled = torch.randn(m, n, generator=generator)
    aggregator = case(m)
    assert isinstance(aggregator, GramianWeightedAggregator)

    torch.manual_seed(0)  # Random and PCGrad draw from torch's RNG
    output = aggregator(unscaled * scale)
    torch.manual_seed(0)
    reference = aggregator(unscaled).double() * scale

    note(f"output: {output.tolist()}\nreference: {reference.tolist()}")
    assert bool(torch.isfinite(output).all())
    # Relative to the rows, or to the output when ill-conditioned weights make it larger.
    tolerance = 1e-5 * max(scale * float(unscaled.norm(dim=1).max()), float(reference.abs().max()))
    assert bool(((output.double() - reference).abs() <= tolerance).all())


@pytest.mark.parametrize("scale", SMALL_SCALES + LARGE_SCALES)
@pytest.mark.parametrize("case", params([case for case in ANY_SCALE_CASES if not case.slow]))
@settings(max_examples=8)
@given(seed=seeds, m=st.integers(3, 6), n=st.integers(1, 8))
def test_scale_invariant_aggregators_are_finite_and_exact_at_every_scale(
    case: AggregatorCase, scale: float, seed: int, m: int, n: int
) -> None:
    _scale_invariance(case, seed, m, n, scale)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("case", "scale"),
    [
        pytest.param(case, scale, id=f"{case.name}-{scale:.2g}")
        for scale in LARGE_SCALES
        for case in LARGE_SCALE_CASES
    ],
)
@settings(max_examples=8)
@given(seed=seeds, m=st.integers(3, 6), n=st.integers(1, 8))
def test_trace_thresholded_aggregators_are_finite_and_exact_at_large_scales(
    case: AggregatorCase, scale: float, seed: int, m: int, n: int
) -> None:
    _scale_invariance(case, seed, m, n, scale)


@pytest.mark.parametrize("scale", [2.0**-1000, 2.0**-530, 2.0**530, 2.0**1000])
@pytest.mark.parametrize("case", params([case for case in ANY_SCALE_CASES if not case.slow]))
def test_float64_jacobians_beyond_the_square_root_of_the_range(
    case: AggregatorCase, scale: float
) -> None:
    unscaled = torch.randn(4, 5, dtype=torch.float64)
    aggregator = case(4)

    torch.manual_seed(0)
    output = aggregator(unscaled * scale)
    torch.manual_seed(0)
    reference = aggregator(unscaled) * scale

    torch.testing.assert_close(output, reference, rtol=1e-9, atol=1e-9 * scale)


def test_the_rescaled_weightings_are_those_expected() -> None:
    assert {class_name(case) for case in LARGE_SCALE_CASES} == {"UPGrad", "DualProj", "CAGrad"}
    assert "FairGrad" not in {class_name(case) for case in ANY_SCALE_CASES}
    assert {"MGDA", "IMTLG", "Mean"} <= {class_name(case) for case in ANY_SCALE_CASES}
