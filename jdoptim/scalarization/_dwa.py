"""DWA: dynamic weight average, from the ratio of the last two epoch-average losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import Scalarizer
from ._checks import check_positive


class DWA(Scalarizer):
    r"""Dynamic weight average: :math:`\sum_i w_i L_i` with
    :math:`w = m \operatorname{softmax}(r / T)`, :math:`r_i = A^{(t-1)}_i / A^{(t-2)}_i`.

    :math:`A^{(t)}` is the average of the values over the calls of epoch :math:`t`: a loss that
    decreased slowly over the last epoch gets a larger weight. The weights sum to :math:`m`,
    are constants for the gradient, and are 1 until two epochs are finished. From "End-to-End
    Multi-Task Learning with Attention" (Liu et al., 2019).

    Every call first computes the weights from the finished epochs, then adds the (detached)
    values to the running sum of the current epoch, even under :func:`torch.no_grad` (use
    another instance for validation losses). A call whose values are not all finite is not
    counted, so that one overflowed batch does not spoil the averages. Call :meth:`step` once
    at the end of every epoch. The running sum, the number of calls of the epoch and the last
    two epoch averages are in ``state_dict()``, so a reloaded instance resumes identically,
    even in the middle of an epoch. The losses are assumed to keep one sign (the paper's losses
    are positive).

    Args:
        temperature: the temperature :math:`T`, a finite number ``> 0``; a larger one gives more
            uniform weights. The paper uses 2.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import DWA
        >>> scalarizer = DWA()
        >>> for epoch_losses in ([4.0, 4.0], [2.0, 3.0]):  # two epochs of one batch each
        ...     _ = scalarizer(torch.tensor(epoch_losses))
        ...     scalarizer.step()
        >>> losses = torch.tensor([1.0, 1.0], requires_grad=True)
        >>> scalarizer(losses).backward()
        >>> [round(w, 3) for w in losses.grad.tolist()]  # loss 2 decreased less: more weight
        [0.938, 1.062]
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = temperature
        self._sum: Tensor | None = None
        self._count: Tensor | None = None
        self._history: list[Tensor] = []

    def forward(self, values: Tensor, /) -> Tensor:
        weights = self._weights(values)
        if self._sum is not None and self._sum.shape != values.shape:
            raise ValueError(
                f"`values` must keep the shape {tuple(self._sum.shape)} within an epoch, but got "
                f"shape {tuple(values.shape)}; call reset() before changing it."
            )
        detached = values.detach()
        # Decided on the device, without reading the flag on the host.
        finite = torch.isfinite(detached).all()
        kept = torch.where(finite, detached, torch.zeros_like(detached))
        if self._sum is None or self._count is None:
            self._sum = kept.clone()
            self._count = finite.to(torch.int64)
        else:
            self._sum = self._sum.to(values.device) + kept
            self._count = self._count.to(values.device) + finite.to(torch.int64)
        if weights is None:
            return values.sum()
        return (weights * values).sum()

    def _weights(self, values: Tensor) -> Tensor | None:
        """``m softmax(r / T)`` shaped like ``values``, or None (all ones) before two epochs."""
        if len(self._history) < 2:
            return None
        older, newer = self._history
        if older.shape != values.shape:
            raise ValueError(
                f"`values` must have the shape {tuple(older.shape)} of the previous epochs, but "
                f"got shape {tuple(values.shape)}; call reset() before changing it."
            )
        ratios = (newer / older).to(values.device).flatten()
        weights = (ratios / self.temperature).softmax(dim=0).reshape(values.shape)
        return values.numel() * weights

    def step(self) -> None:
        """Ends the epoch: the average of its counted calls becomes the newest epoch average
        (only the last two are kept) and the running sum starts again. Does nothing when no call
        was counted since the last step."""
        if self._sum is None or self._count is None or int(self._count) == 0:
            return
        average = self._sum / self._count
        self._history = [*self._history, average][-2:]
        self._sum = None
        self._count = None

    def reset(self) -> None:
        """Forgets the running sum, the number of calls and the epoch averages."""
        self._sum = None
        self._count = None
        self._history = []

    def get_extra_state(self) -> dict[str, Any]:
        return {"sum": self._sum, "count": self._count, "history": list(self._history)}

    def set_extra_state(self, state: Any) -> None:
        if (
            not isinstance(state, dict)
            or set(state) != {"sum", "count", "history"}
            or not isinstance(state["history"], list)
            or len(state["history"]) > 2
            or not all(isinstance(a, Tensor) for a in state["history"])
            or not all(state[k] is None or isinstance(state[k], Tensor) for k in ("sum", "count"))
            or (state["sum"] is None) != (state["count"] is None)
        ):
            raise ValueError(
                "The state of DWA must be the dict of its `state_dict()`, with the keys 'sum', "
                f"'count' and 'history', but got {state!r}."
            )
        self._sum = state["sum"]
        self._count = state["count"]
        self._history = list(state["history"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temperature={self.temperature!r})"
