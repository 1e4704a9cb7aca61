"""Jacobian descent on several processes: ``torch.distributed`` + ``DistributedDataParallel``.

Each process (rank) holds a shard of every batch. ``JacobianOptimizer(...,
process_group=...)`` averages the Jacobian of the mean-reduced losses over the ranks (one
``all_reduce`` per step), so every rank aggregates the Jacobian of the full batch and makes the
step that one process holding the whole batch would make: the ranks stay identical, and the
run reaches the same parameters as the single-process run (the script prints both ways to
check). The model is wrapped in ``DistributedDataParallel`` (which broadcasts rank 0's
parameters at construction); its forward runs under ``no_sync()``, since the optimizer, not
DDP, synchronises the gradients in Jacobian mode.

``--mode`` picks the optimizer's mode: ``multi-task`` (the default: ``features=``, one
all-reduce of the Jacobian per step), ``jacobian`` (the task losses without ``features``:
UPGrad's aggregation is sharded across the ranks: a reduce-scatter of the Jacobian, an
all-reduce of the Gramians, an all-gather of the update) or ``gramian`` (one loss per sample and
an ``autogram.Engine``: the Gramian of the losses of all ranks, from the gathered activations and
output gradients of each layer).

Run on CPU with two processes (gloo backend):
``torchrun --nproc_per_node=2 examples/distributed.py --steps 50 [--mode gramian]``.
Without ``torchrun``, it runs in one process on the whole batch.
"""

from __future__ import annotations

import argparse
import gc
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from jdoptim import JacobianOptimizer
from jdoptim.aggregation import UPGrad
from jdoptim.autogram import Engine

MODES = ("multi-task", "jacobian", "gramian")


class MultiTaskModel(nn.Module):
    """A shared trunk and one head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(32, 1), nn.Linear(32, 1)])

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = self.trunk(x)
        return features, [head(features).squeeze(1) for head in self.heads]


def make_batch(step: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """The full batch of ``step`` (the same on every rank): two regression tasks."""
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(batch_size, 10, generator=generator)
    targets = torch.stack([x[:, :5].sum(dim=1), (x[:, 5:] ** 2).sum(dim=1) - x[:, 0]], dim=1)
    return x, targets


def task_losses(outputs: list[Tensor], targets: Tensor) -> list[Tensor]:
    """One mean-reduced loss per task: averaging them over equal shards gives the full batch's."""
    return [(output - targets[:, i]).pow(2).mean() for i, output in enumerate(outputs)]


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description="Jacobian descent over torch.distributed.")
    parser.add_argument("--steps", type=int, default=50, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=64, help="the full batch (all ranks)")
    parser.add_argument("--mode", choices=MODES, default="multi-task", help="optimizer mode")
    args = parser.parse_args(argv)

    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them, one process.
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")  # CPU; use "nccl" with one GPU per rank
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    if args.batch_size % world_size:
        raise ValueError(
            f"`--batch-size` must be a multiple of the number of processes {world_size}, but "
            f"got {args.batch_size}."
        )
    shard = slice(rank * args.batch_size // world_size, (rank + 1) * args.batch_size // world_size)

    torch.manual_seed(0)
    model = MultiTaskModel()
    ddp = DistributedDataParallel(model) if distributed else None
    optimizer = JacobianOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2),
        UPGrad(),
        engine=Engine(model, batch_dim=0) if args.mode == "gramian" else None,
        process_group=dist.group.WORLD if distributed else None,
    )

    forward = ddp if ddp is not None else model
    history = []
    for step in range(args.steps):
        x, targets = make_batch(step, args.batch_size)
        with ddp.no_sync() if ddp is not None else nullcontext():
            features, outputs = forward(x[shard])
        optimizer.zero_grad()
        if args.mode == "multi-task":
            optimizer.step(task_losses(outputs, targets[shard]), features=features)
        elif args.mode == "jacobian":
            optimizer.step(task_losses(outputs, targets[shard]))
        else:  # one loss per sample: the mean of its squared errors
            errors = torch.stack(outputs, dim=1) - targets[shard]
            optimizer.step(errors.pow(2).mean(dim=1))
        with torch.no_grad():  # the losses of the full batch, for the record
            history.append([loss.item() for loss in task_losses(model(x)[1], targets)])

    parameters = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    identical = True
    if distributed:
        gathered = [torch.empty_like(parameters) for _ in range(world_size)]
        dist.all_gather(gathered, parameters)
        identical = all(torch.equal(gathered[0], other) for other in gathered)
        dist.barrier()  # no rank closes its connections while another still reads from them
        # What holds the process group (the DDP wrapper, the optimizer) goes first, while the
        # interpreter is fully alive.
        del forward, ddp, optimizer
        gc.collect()
        dist.destroy_process_group()
    if rank == 0:
        first, last = history[0], history[-1]
        print(
            f"mode: {args.mode}, processes: {world_size}, full batch: {args.batch_size}, "
            f"steps: {args.steps}"
        )
        print(f"full-batch losses after step 1: {first[0]:.6f} {first[1]:.6f}")
        print(f"full-batch losses after step {args.steps}: {last[0]:.6f} {last[1]:.6f}")
        print(f"parameter checksum: {parameters.double().sum().item():.6f}")
        print(f"identical parameters on every rank: {identical}")
    return {"history": history, "identical": identical, "parameters": parameters}


if __name__ == "__main__":
    main()
