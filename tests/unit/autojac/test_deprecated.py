"""The deprecated top-level shims jdoptim.backward and jdoptim.mtl_backward still work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import jdoptim
from jdoptim import autojac


def test_backward_warns_and_matches_autojac() -> None:
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    autojac.backward(model(x).sum(dim=0))
    expected = [p.jac for p in model.parameters()]
    for p in model.parameters():
        del p.jac

    with pytest.warns(DeprecationWarning, match=r"jdoptim\.autojac\.backward"):
        jdoptim.backward(model(x).sum(dim=0), parallel_chunk_size=1)

    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.jac, e)


def test_mtl_backward_warns_and_matches_autojac() -> None:
    trunk, head_1, head_2 = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 1)
    x = torch.randn(5, 3)

    def run() -> None:
        features = trunk(x)
        losses = [head_1(features).square().mean(), head_2(features).abs().mean()]
        jdoptim.mtl_backward(losses, features, retain_graph=False)

    features = trunk(x)
    autojac.mtl_backward(
        [head_1(features).square().mean(), head_2(features).abs().mean()], features
    )
    expected_jac = trunk.weight.jac
    expected_grad = head_1.weight.grad
    del trunk.weight.jac, trunk.bias.jac
    head_1.weight.grad = None

    with pytest.warns(DeprecationWarning, match=r"jdoptim\.autojac\.mtl_backward"):
        run()

    torch.testing.assert_close(trunk.weight.jac, expected_jac)
    torch.testing.assert_close(head_1.weight.grad, expected_grad)


def test_shims_still_import_from_the_top_level() -> None:
    from jdoptim import backward, mtl_backward

    assert "backward" in jdoptim.__all__
    assert "mtl_backward" in jdoptim.__all__
    assert callable(backward) and callable(mtl_backward)
    assert backward is not autojac.backward


def test_warning_points_at_the_caller() -> None:
    x = torch.randn(2, requires_grad=True)
    with pytest.warns(DeprecationWarning) as record:
        jdoptim.backward(x * 2)
    assert record[0].filename == __file__
