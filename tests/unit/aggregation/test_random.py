"""Random and RandomWeighting: softmax of a standard normal draw."""

from __future__ import annotations

import torch

from jdoptim.aggregation import Random, RandomWeighting

J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def test_weights_are_the_softmax_of_a_standard_normal_draw() -> None:
    torch.manual_seed(3)
    expected = torch.randn(4).softmax(dim=0)

    torch.manual_seed(3)
    weights = RandomWeighting()(torch.eye(4))

    assert torch.equal(weights, expected)


def test_weights_are_positive_and_sum_to_one() -> None:
    weights = RandomWeighting()(torch.eye(7, dtype=torch.float64))

    assert weights.dtype == torch.float64
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_reproducible_under_manual_seed() -> None:
    aggregator = Random()

    torch.manual_seed(42)
    first = aggregator(J)
    torch.manual_seed(42)
    second = aggregator(J)

    assert torch.equal(first, second)


def test_a_new_draw_at_every_call() -> None:
    weighting = RandomWeighting()

    assert not torch.equal(weighting(torch.eye(3)), weighting(torch.eye(3)))


def test_output_is_the_weighted_combination_of_the_rows() -> None:
    torch.manual_seed(0)
    weights = torch.randn(2).softmax(dim=0)

    torch.manual_seed(0)
    output = Random()(J)

    torch.testing.assert_close(output, weights @ J)


def test_single_row_gets_weight_one() -> None:
    assert RandomWeighting()(torch.ones(1, 1)).tolist() == [1.0]


def test_repr_and_str() -> None:
    assert repr(Random()) == "Random()"
    assert str(Random()) == "Random"
    assert repr(RandomWeighting()) == "RandomWeighting()"
