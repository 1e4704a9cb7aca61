"""A PyTorch Lightning module trained by JacobianOptimizer in manual optimisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad

lightning = pytest.importorskip("lightning")


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def make_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 5, generator=generator), torch.randn(40, 3, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def task_losses(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean(dim=0)


class MultiOutputRegression(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = make_model()
        self.weights_seen: list[Tensor] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        opt = self.optimizers()
        losses = task_losses(self.model, batch)
        opt.zero_grad()
        opt.backward(losses)
        opt.step()
        self.weights_seen.append(opt.last_weights[0])

    def configure_optimizers(self) -> JacobianOptimizer:
        return JacobianOptimizer(torch.optim.SGD(self.parameters(), lr=0.1), UPGrad())


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")  # inside Lightning itself
def test_lightning_manual_optimisation(tmp_path: Path) -> None:
    module = MultiOutputRegression()
    trainer = lightning.Trainer(
        max_steps=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, make_loader())
    assert trainer.global_step == 5
    assert len(module.weights_seen) == 5

    reference = make_model()
    reference_opt = JacobianOptimizer(torch.optim.SGD(reference.parameters(), lr=0.1), UPGrad())
    for batch in make_loader():
        reference_opt.zero_grad()
        reference_opt.step(task_losses(reference, batch))
    for actual, expected in zip(module.model.parameters(), reference.parameters()):
        assert torch.allclose(actual, expected, atol=1e-6)
