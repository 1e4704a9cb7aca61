"""The stateful and loss-aware methods through ``JacobianOptimizer``: a few steps of a small
multi-task model in every mode the method allows, and a checkpoint resume that is bit-exact."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from jdoptim import JacobianOptimizer
from jdoptim import aggregation as agg
from jdoptim.autogram import Engine

STEPS, SPLIT = 5, 3

#: Aggregators usable in Jacobian and multi-task modes.
AGGREGATORS: dict[str, Callable[[], agg.Aggregator]] = {
    "FairGrad": lambda: agg.FairGrad(alpha=0.5),
    "GradVac": lambda: agg.GradVac(beta=0.3),
    "ExcessMTL": lambda: agg.ExcessMTL(robust_step_size=0.5),
    "PCD": lambda: agg.PCD(tau=0.2, beta=0.9),
    "DBMTL": lambda: agg.DBMTL(beta=0.9, beta_sigma=0.5),
    "MoCo": lambda: agg.MoCo(),
    "CRMOGM(UPGrad)": lambda: agg.GramianWeightedAggregator(
        agg.CRMOGMWeighting(agg.UPGradWeighting(), alpha=0.7)
    ),
    "GradNorm": lambda: agg.GramianWeightedAggregator(agg.GradNormWeighting()),
    "DBMTLWeighting": lambda: agg.GramianWeightedAggregator(agg.DBMTLWeighting()),
}

#: Weightings usable in Gramian mode (task losses, ``batch_dim=None``).
WEIGHTINGS: dict[str, Callable[[], agg.Weighting]] = {
    "FairGradWeighting": lambda: agg.FairGradWeighting(alpha=0.5),
    "GradVacWeighting": lambda: agg.GradVacWeighting(beta=0.3),
    "PCDWeighting": lambda: agg.PCDWeighting(tau=0.2, beta=0.9),
    "CRMOGMWeighting": lambda: agg.CRMOGMWeighting(agg.MGDAWeighting(), alpha=0.5),
    "GradNormWeighting": lambda: agg.GradNormWeighting(),
    "DBMTLWeighting": lambda: agg.DBMTLWeighting(),
}


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        return features, torch.cat([head(features) for head in self.heads], dim=1)


def batch(step: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(16, 5, generator=generator)
    return x, torch.stack([x[:, 0], x[:, 1] - x[:, 2], x.pow(2).mean(1)], dim=1)


def task_losses(model: Model, step: int) -> tuple[Tensor, Tensor]:
    x, y = batch(step)
    features, outputs = model(x)
    return features, ((outputs - y) ** 2).mean(dim=0) + 0.1  # positive losses for DB-MTL


def make(mode: str, name: str) -> tuple[Model, JacobianOptimizer]:
    model = Model()
    adam = torch.optim.Adam(model.parameters(), lr=0.01)
    if mode == "gramian":
        opt = JacobianOptimizer(
            adam, weighting=WEIGHTINGS[name](), engine=Engine(model, batch_dim=None)
        )
    else:
        opt = JacobianOptimizer(adam, AGGREGATORS[name]())
    return model, opt


def train(model: Model, opt: JacobianOptimizer, mode: str, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        features, losses = task_losses(model, step)
        if mode == "multi-task":
            opt.step(list(losses), features=features)
        else:
            opt.step(losses)


def checkpoint(model: Model, opt: JacobianOptimizer) -> dict[str, object]:
    buffer = io.BytesIO()
    # Like a user's checkpoint, it holds torch's generator, from which GradVac draws its orders.
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # type: ignore[no-any-return]


CONFIGURATIONS = [
    *[("jacobian", name) for name in AGGREGATORS],
    *[("multi-task", name) for name in AGGREGATORS],
    *[("gramian", name) for name in WEIGHTINGS],
]


@pytest.mark.parametrize(("mode", "name"), CONFIGURATIONS)
def test_trains_and_resumes_bit_for_bit(mode: str, name: str) -> None:
    model, opt = make(mode, name)
    initial = [task_losses(model, 0)[1].detach()]
    train(model, opt, mode, range(STEPS))
    uninterrupted = [p.detach().clone() for p in model.parameters()]
    assert all(torch.isfinite(p).all() for p in uninterrupted)
    assert not torch.equal(uninterrupted[0], Model().trunk[0].weight.detach())
    assert initial[0].shape == (3,)

    model, opt = make(mode, name)
    train(model, opt, mode, range(SPLIT))
    saved = checkpoint(model, opt)
    model, opt = make(mode, name)  # a fresh model, optimizer and method
    model.load_state_dict(saved["model"])  # type: ignore[arg-type]
    opt.load_state_dict(saved["opt"])  # type: ignore[arg-type]
    torch.set_rng_state(saved["rng"])  # type: ignore[arg-type]
    train(model, opt, mode, range(SPLIT, STEPS))
    for resumed, expected in zip(model.parameters(), uninterrupted, strict=True):
        assert torch.equal(resumed, expected)


@pytest.mark.parametrize("name", ["DBMTL", "GradNorm"])
def test_loss_aware_methods_see_the_losses_of_the_step(name: str) -> None:
    model, opt = make("jacobian", name)
    seen: list[Tensor] = []
    aggregator = opt.aggregator
    module = aggregator.gramian_weighting if name == "GradNorm" else aggregator  # type: ignore[union-attr]
    module.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["losses"]), with_kwargs=True
    )
    _, losses = task_losses(model, 0)
    opt.step(losses)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], losses.detach())


def test_gramian_mode_refuses_a_weighting_of_the_jacobian() -> None:
    model = Model()
    with pytest.raises(ValueError, match="reads the Jacobian"):
        JacobianOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            weighting=agg.ExcessMTLWeighting(),
            engine=Engine(model, batch_dim=None),
        )


def test_double_sampling_in_gramian_mode() -> None:
    model = Model()
    opt = JacobianOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        weighting=agg.DoubleSampling(agg.MoDoWeighting()),
        engine=Engine(model, batch_dim=None),
    )
    for step in range(3):
        opt.zero_grad()
        losses = torch.stack([task_losses(model, 3 * step + k)[1] for k in range(3)])  # [3, 3]
        opt.step(losses)
        weights = opt.last_weights[0]
        assert weights is not None and weights.shape == (3, 3)
        assert torch.equal(weights[:2], torch.zeros(2, 3))  # only the third batch is updated
        torch.testing.assert_close(weights[2].sum(), torch.tensor(1.0))


def test_accumulated_losses_reach_a_loss_aware_aggregator() -> None:
    model, opt = make("jacobian", "DBMTL")
    seen: list[Tensor] = []
    opt.aggregator.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["losses"]), with_kwargs=True
    )
    halves = [task_losses(model, step)[1] / 2 for step in (0, 1)]
    for losses in halves:
        opt.backward(losses, aggregate=False)
    opt.aggregate()
    torch.testing.assert_close(seen[0], (halves[0] + halves[1]).detach())
