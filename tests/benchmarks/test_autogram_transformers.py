"""The transformer IWRM benchmark's steps run, and autogram's step is Jᵀ w with UPGrad weights
(no timing asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from autogram_transformers import MODELS, make_batch, make_model, make_step, per_sample_losses

from jdoptim.aggregation import UPGrad


@pytest.mark.parametrize("name", MODELS)
def test_autogram_step_moves_the_parameters_by_the_upgrad_update(name: str) -> None:
    torch.manual_seed(0)
    model = make_model(name)
    reference = make_model(name)
    reference.load_state_dict(model.state_dict())
    x, y = make_batch(name, batch=3)
    make_step("autogram", name, model)(x, y)

    losses = per_sample_losses(name, reference, x, y)
    params = list(reference.parameters())
    rows = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
    jacobian = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])
    update = UPGrad()(jacobian)
    expected = torch.cat([p.detach().reshape(-1) for p in params]) - 1e-3 * update
    moved = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(moved, expected, rtol=1e-4, atol=1e-6)


def test_summed_step_runs() -> None:
    torch.manual_seed(0)
    model = make_model("causal_lm")
    before = [p.detach().clone() for p in model.parameters()]
    make_step("summed", "causal_lm", model)(*make_batch("causal_lm", batch=2))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="name"):
        make_model("gpt")
    with pytest.raises(ValueError, match="configuration"):
        make_step("autojac", "encoder", make_model("encoder"))
