"""``NonFiniteGradientError`` and the report of what was found non-finite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..autojac._aggregate import all_finite


class NonFiniteGradientError(ValueError):
    """Raised by :meth:`JacobianOptimizer.step` instead of applying non-finite gradients.

    The message says which parameter groups hold NaN or inf gradients and the likely causes: a
    loss that is itself NaN or inf, an overflow (e.g. of float16 losses), or a learning rate that
    made the model diverge. Under :class:`torch.amp.GradScaler` the scaler detects overflows and
    skips the step itself, so this error is only raised when ``step`` is called without a scaler.
    Parameters, gradients and the optimizer's state are left as they were before the call.

    Example:
        >>> import torch
        >>> from jdoptim import JacobianOptimizer, NonFiniteGradientError
        >>> from jdoptim.aggregation import Mean
        >>> weight = torch.nn.Parameter(torch.ones(2))
        >>> opt = JacobianOptimizer(torch.optim.SGD([weight], lr=0.1), Mean())
        >>> try:
        ...     opt.step([weight.sum() * float("inf"), weight.sum()])
        ... except NonFiniteGradientError:
        ...     print("refused:", weight.tolist())
        refused: [1.0, 1.0]
    """


def non_finite_report(param_groups: Sequence[dict[str, Any]]) -> str | None:
    """``None`` when every ``.grad`` is finite, else a sentence naming the groups and the values."""
    found = []
    for index, group in enumerate(param_groups):
        kinds = set()
        for param in group["params"]:
            grad = param.grad
            if grad is None or grad.numel() == 0:
                continue
            values = grad.coalesce().values() if grad.is_sparse else grad
            if bool(torch.isnan(values).any()):
                kinds.add("NaN")
            if bool(torch.isinf(values).any()):
                kinds.add("inf")
        if kinds:
            found.append(f"parameter group {index} ({' and '.join(sorted(kinds))})")
    if not found:
        return None
    return (
        f"The gradients of {', '.join(found)} are not finite, so `step` did not apply them; "
        "parameters and optimizer state are unchanged. Likely causes: a loss that is itself NaN "
        "or inf (check the losses of this step: a log or a division by 0, a model that "
        "diverged, e.g. after a learning rate too large); or an overflow of float16/bfloat16 "
        "losses or gradients: use torch.amp.GradScaler (`opt.backward(scaler.scale(losses)); "
        "scaler.step(opt)`), which skips such steps automatically."
    )


def check_finite_grads(param_groups: Sequence[dict[str, Any]], known_finite: bool) -> None:
    """Raises :class:`NonFiniteGradientError` when some ``.grad`` holds inf or NaN (one summing
    pass; the report that names the groups is only built then). ``known_finite`` skips it."""
    if known_finite:
        return
    grads = [p.grad for group in param_groups for p in group["params"] if p.grad is not None]
    if all_finite(grads):
        return
    raise NonFiniteGradientError(non_finite_report(param_groups) or "The gradients are not finite.")
