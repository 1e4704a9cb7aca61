"""FAMO: fast adaptive multitask optimization, with logits learned from the losses' decrease."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._base import Scalarizer
from ._checks import as_shape, check_non_negative, check_same_shape, config_tensor

# Added to ``L - b`` before every logarithm and ratio.
_EPS = 1e-8
# The internal Adam's constants (those of ``torch.optim.Adam``).
_BETA1 = 0.9
_BETA2 = 0.999
_ADAM_EPS = 1e-8


class FAMO(Scalarizer):
    r"""Fast adaptive multitask optimization: :math:`\sum_i \frac{z_i}{c} \log D_i`.

    With :math:`D = L - b + \epsilon` (:math:`b` the lower bounds ``min_losses``,
    :math:`\epsilon = 10^{-8}`), the task weights :math:`z = \operatorname{softmax}(w)` of the
    logits :math:`w` and :math:`c = \sum_i z_i / D_i`, both treated as constants. The gradient
    with respect to :math:`L_i` is :math:`z_i / (c D_i)`, positive weights that sum to 1: a
    convex combination of the task gradients that decreases all the losses at about the same
    relative rate. From "FAMO: Fast Adaptive Multitask Optimization" (Liu et al., 2023).

    The logits are learned by FAMO itself, not by the model's optimizer: after the model's
    step, call :meth:`update` with the losses evaluated again on the same batch. It takes one
    step of an internal Adam (``torch.optim.Adam``'s rule) on :math:`w`. The logits are the
    buffer ``logits``, so ``parameters()`` is empty. The losses must stay above ``min_losses``
    (the logarithm of a non-positive number is NaN; not checked in the forward pass).

    Every call remembers the detached values as the losses before the step. The logits, the
    Adam moments and step count, the remembered losses and ``min_losses`` are in
    ``state_dict()``, so a reloaded instance resumes identically, even between a call and its
    :meth:`update`.

    Args:
        shape: the shape of the values: an int ``n`` for ``(n,)``, or a sequence of ints.
        min_losses: the lower bounds :math:`b`, a tensor of exactly ``shape``; ``None``
            (default) means zeros. Stored as the buffer ``min_losses``.
        lr: the learning rate of the internal Adam, a finite number ``>= 0`` (the paper's
            0.025 by default).
        weight_decay: the L2 weight decay of the internal Adam (added to the gradient, not
            decoupled), a finite number ``>= 0``. The default 1e-3 is the paper's; its official
            code uses 1e-5.

    Example:
        >>> import torch
        >>> from jdoptim.scalarization import FAMO
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 2)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> scalarizer = FAMO(2)
        >>> x = torch.randn(8, 3)
        >>> optimizer.zero_grad()
        >>> scalarizer(model(x).pow(2).mean(dim=0)).backward()
        >>> optimizer.step()
        >>> with torch.no_grad():  # the losses of the same batch, after the step
        ...     scalarizer.update(model(x).pow(2).mean(dim=0))
        >>> [round(w, 3) for w in scalarizer.logits.tolist()]  # first Adam step: about lr each
        [-0.025, 0.025]
    """

    logits: Tensor
    min_losses: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_step: Tensor

    def __init__(
        self,
        shape: int | Sequence[int],
        min_losses: Tensor | None = None,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
    ) -> None:
        super().__init__()
        sizes = as_shape(shape)
        check_non_negative("lr", lr)
        check_non_negative("weight_decay", weight_decay)
        bounds = config_tensor("min_losses", min_losses, optional=True)
        if bounds is None:
            bounds = torch.zeros(sizes)
        elif tuple(bounds.shape) != sizes:
            raise ValueError(
                f"`min_losses` must have the shape {sizes} given by `shape`, but got shape "
                f"{tuple(bounds.shape)}."
            )
        self.lr = lr
        self.weight_decay = weight_decay
        self.register_buffer("min_losses", bounds)
        self.register_buffer("logits", torch.zeros(sizes))
        self.register_buffer("exp_avg", torch.zeros(sizes))
        self.register_buffer("exp_avg_sq", torch.zeros(sizes))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.int64))
        self._before: Tensor | None = None

    def forward(self, values: Tensor, /) -> Tensor:
        check_same_shape(values, self.logits, "logits")
        self._before = values.detach().clone()
        shifted = values - self.min_losses + _EPS
        # In the dtype of the result: float64 losses get float64 weights, not float32 ones.
        z = self._task_weights().to(shifted.dtype)
        c = (z / shifted).sum().detach()
        return ((z / c) * shifted.log()).sum()

    def _task_weights(self) -> Tensor:
        """``softmax(w)`` over all the entries, shaped like the logits."""
        return self.logits.flatten().softmax(dim=0).reshape(self.logits.shape)

    def update(self, values: Tensor, /) -> None:
        """Learns the logits from the decrease of the losses over the model's step.

        ``values`` are the losses evaluated again on the same batch after the step (they are
        detached). With :math:`\\delta = \\log(L^{before} - b + \\epsilon) - \\log(L^{after} - b
        + \\epsilon)` and :math:`z = \\operatorname{softmax}(w)`, the gradient of the logits is
        :math:`g = z \\odot (\\delta - z \\cdot \\delta)` and one Adam step is taken on them. The
        remembered losses are kept.

        Raises:
            ValueError: if the scalarizer was not called since it was built or reset, if
                ``values`` does not have the logits' shape, or if :math:`\\delta` is not finite
                (the logits and the Adam state are then left unchanged).
        """
        if not isinstance(values, Tensor):
            raise TypeError(f"`values` must be a torch.Tensor, but got {type(values).__name__}.")
        if self._before is None:
            raise ValueError(
                "FAMO.update needs the losses before the step: call the scalarizer first."
            )
        check_same_shape(values, self.logits, "logits")
        before = self._before.to(values.device) - self.min_losses + _EPS
        after = values.detach() - self.min_losses + _EPS
        delta = before.log() - after.log()
        if not bool(torch.isfinite(delta).all()):
            raise ValueError(
                "`values` and the remembered losses must be finite and above `min_losses` for "
                "FAMO.update, but the decrease of the log-losses is not finite; the logits are "
                "left unchanged."
            )
        z = self._task_weights().to(delta.dtype)
        grad = (z * (delta - (z * delta).sum())).to(self.logits.dtype)
        self._adam_step(grad)

    def _adam_step(self, grad: Tensor) -> None:
        """One step of ``torch.optim.Adam``'s rule on the logits (L2 decay, bias correction)."""
        self.adam_step += 1
        if self.weight_decay != 0:
            grad = grad.add(self.logits, alpha=self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - _BETA1)
        self.exp_avg_sq.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        step = float(self.adam_step.item())
        bias_correction1 = 1 - _BETA1**step
        bias_correction2_sqrt = (1 - _BETA2**step) ** 0.5
        denominator = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(_ADAM_EPS)
        self.logits.addcdiv_(self.exp_avg, denominator, value=-self.lr / bias_correction1)

    def reset(self) -> None:
        """Sets the logits back to 0, forgets the Adam moments and step count and the
        remembered losses (a following :meth:`update` raises)."""
        self.logits.zero_()
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()
        self.adam_step.zero_()
        self._before = None

    def get_extra_state(self) -> dict[str, Any]:
        return {"before": self._before}

    def set_extra_state(self, state: Any) -> None:
        if (
            not isinstance(state, dict)
            or set(state) != {"before"}
            or not (state["before"] is None or isinstance(state["before"], Tensor))
        ):
            raise ValueError(
                "The state of FAMO must be the dict of its `state_dict()`, with the key 'before', "
                f"but got {state!r}."
            )
        self._before = state["before"]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={tuple(self.logits.shape)}, lr={self.lr!r}, "
            f"weight_decay={self.weight_decay!r})"
        )
