"""The finite check shared by the optimizer's modes (`all_finite`)."""

import pytest
import torch

from jdoptim.autojac._aggregate import all_finite


@pytest.mark.parametrize(
    "tensors, expected",
    [
        ([torch.ones(3), torch.zeros(2, 2)], True),
        ([], True),
        ([torch.empty(0), torch.ones(1)], True),
        ([torch.ones(3), torch.tensor([1.0, float("nan")])], False),
        ([torch.tensor([float("inf"), -float("inf")])], False),  # the sum is NaN, not finite
        ([torch.tensor([1.0 + 1.0j, 2.0j])], True),
        ([torch.tensor([1.0 + 1.0j, complex(0.0, float("inf"))])], False),
        # Summed in float32, so that 2 × 60000 does not overflow float16's maximum (65504).
        ([torch.full((2,), 6.0e4, dtype=torch.float16)], True),
        ([torch.tensor([1.0, float("inf")], dtype=torch.bfloat16)], False),
        (
            [torch.sparse_coo_tensor([[0, 1]], [1.0, float("nan")], (4,), check_invariants=True)],
            False,
        ),
        ([torch.sparse_coo_tensor([[0, 1]], [1.0, 2.0], (4,), check_invariants=True)], True),
    ],
)
def test_all_finite(tensors: list[torch.Tensor], expected: bool) -> None:
    assert all_finite(tensors) is expected


def test_all_finite_stops_at_the_first_non_finite_cpu_tensor() -> None:
    summed: list[torch.Tensor] = []

    class Recording(torch.Tensor):
        def sum(self, *args: object, **kwargs: object) -> torch.Tensor:  # type: ignore[override]
            summed.append(self)
            return super().sum(*args, **kwargs)  # type: ignore[arg-type]

    first = torch.tensor([float("nan")]).as_subclass(Recording)
    second = torch.ones(2).as_subclass(Recording)
    assert all_finite([first, second]) is False
    assert summed == [first]
