"""Random numbers drawn identically on every rank of a process group, at no per-step cost."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

# Seeds drawn for each step stay below 2**62: exactly representable by an int64 tensor.
_SEED_BOUND = 2**62


class SharedRandomness:
    """A generator whose state is the same on every rank, and a way to aggregate with it.

    The generator is seeded once, by one broadcast of rank 0's ``torch.initial_seed()`` (so
    ``torch.manual_seed`` on rank 0 controls it), the first time it is needed, or by
    :meth:`load_state`. Each :meth:`fork` then draws one seed from it (no communication) and
    runs its body under :func:`torch.random.fork_rng` with torch's global CPU generator (and
    that of the given CUDA device) seeded with it, so that aggregators drawing random numbers
    from the global generators draw the same numbers on every rank, and the global generators
    are left as they were (the rest of the training loop, e.g. dropout, is unaffected).
    """

    def __init__(self, process_group: Any) -> None:
        self._process_group = process_group
        self._generator: torch.Generator | None = None

    @property
    def initialised(self) -> bool:
        """Whether the shared seed is known (broadcast already done or state loaded)."""
        return self._generator is not None

    def _initialise(self, device: torch.device) -> torch.Generator:
        import torch.distributed as dist

        group = self._process_group
        seed = torch.tensor([torch.initial_seed() % _SEED_BOUND], dtype=torch.int64, device=device)
        source = 0 if group is None else dist.get_global_rank(group, 0)
        dist.broadcast(seed, src=source, group=group)
        generator = torch.Generator()
        generator.manual_seed(int(seed.item()))
        self._generator = generator
        return generator

    @contextmanager
    def fork(self, device: torch.device) -> Iterator[None]:
        """Runs the body with the global generators seeded identically on every rank.

        The first call on a fresh object is a collective (one broadcast of one integer on
        ``device``); later calls communicate nothing. If the body raises, the shared generator
        goes back to its state before the call, so that a retried step draws the same numbers.
        """
        generator = self._generator or self._initialise(device)
        previous = generator.get_state()
        seed = int(torch.randint(_SEED_BOUND, (1,), generator=generator).item())
        cuda_index = None
        if device.type == "cuda":
            cuda_index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            with torch.random.fork_rng(devices=[] if cuda_index is None else [cuda_index]):
                torch.default_generator.manual_seed(seed)
                if cuda_index is not None:
                    torch.cuda.default_generators[cuda_index].manual_seed(seed)
                yield
        except BaseException:
            generator.set_state(previous)
            raise

    def state(self) -> Tensor | None:
        """The shared generator's state (a ``uint8`` tensor), or ``None`` before it is seeded."""
        return None if self._generator is None else self._generator.get_state()

    def load_state(self, state: Tensor | None) -> None:
        """Restores a state returned by :meth:`state` (``None``: seed again at the next fork)."""
        if state is None:
            self._generator = None
            return
        if not isinstance(state, Tensor) or state.dtype != torch.uint8:
            raise TypeError(
                "`state_dict['jdoptim']['shared_rng_state']` must be a uint8 tensor (a "
                f"torch.Generator state), but got {state!r}."
            )
        generator = torch.Generator()
        try:
            generator.set_state(state.clone())
        except RuntimeError as error:
            raise ValueError(
                "`state_dict['jdoptim']['shared_rng_state']` must be the state of a CPU "
                f"torch.Generator, but it was rejected: {error}"
            ) from error
        self._generator = generator
