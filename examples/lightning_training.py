"""PyTorch Lightning: Jacobian descent with manual optimisation.

Lightning's automatic optimisation calls ``loss.backward()`` on one loss. For several losses,
switch to manual optimisation: ``configure_optimizers`` returns a ``JacobianOptimizer`` (it is a
``torch.optim.Optimizer``, so Lightning accepts it), and ``training_step`` computes the losses,
calls the wrapper's ``backward`` on them and steps.

Run: ``python examples/lightning_training.py --epochs 20``.
"""

from __future__ import annotations

import argparse
import logging
import warnings

import torch
from lightning import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad


class TwoTaskRegressor(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False  # we call backward and step ourselves
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.head1 = nn.Linear(32, 1)
        self.head2 = nn.Linear(32, 1)
        self.epoch_losses: list[list[float]] = []
        self._running: list[list[float]] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        features = self.trunk(inputs)
        loss1 = (self.head1(features).squeeze(1) - targets[:, 0]).pow(2).mean()
        loss2 = (self.head2(features).squeeze(1) - targets[:, 1]).pow(2).mean()

        optimizer = self.optimizers()  # Lightning's wrapper around our JacobianOptimizer
        optimizer.zero_grad()
        jacobian_optimizer = optimizer.optimizer
        assert isinstance(jacobian_optimizer, JacobianOptimizer)
        jacobian_optimizer.backward([loss1, loss2], features=features)
        optimizer.step()  # Lightning's closure returns None: the gradients are kept
        self._running.append([loss1.item(), loss2.item()])

    def on_train_epoch_end(self) -> None:
        means = torch.tensor(self._running).mean(dim=0).tolist()
        self.epoch_losses.append(means)
        self._running = []

    def configure_optimizers(self) -> JacobianOptimizer:
        return JacobianOptimizer(torch.optim.Adam(self.parameters(), lr=1e-2), UPGrad())


def main(argv: list[str] | None = None) -> list[list[float]]:
    parser = argparse.ArgumentParser(description="Jacobian descent in PyTorch Lightning.")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    inputs = torch.randn(256, 8)
    targets = torch.stack([inputs.sum(dim=1), inputs[:, :2].prod(dim=1)], dim=1)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=64, shuffle=True)

    model = TwoTaskRegressor()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer = Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, loader)

    first, last = model.epoch_losses[0], model.epoch_losses[-1]
    print(f"epoch 1: task 1 loss {first[0]:.4f}  task 2 loss {first[1]:.4f}")
    print(f"epoch {args.epochs}: task 1 loss {last[0]:.4f}  task 2 loss {last[1]:.4f}")
    return model.epoch_losses


if __name__ == "__main__":
    main()
