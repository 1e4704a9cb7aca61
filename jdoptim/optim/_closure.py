"""Closures: what the wrapped optimizer calls each time it evaluates the loss (LBFGS: several)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from ._checks import as_losses, detached_sum, requires_grad
from ._errors import check_finite_grads


def closure_evaluator(
    closure: Callable[[], Any],
    backward_and_check: Callable[[Any, dict[str, Any]], None],
    backward_kwargs: dict[str, Any],
    optimizer: Optimizer,
    returned: Callable[[Any], Any] | None = None,
) -> Callable[[], Any]:
    """The closure given to the wrapped optimizer's ``step``.

    It runs ``closure`` with gradients enabled; losses that require grad are back-propagated by
    Jacobian descent (``backward_and_check``) and their detached sum is returned (or
    ``returned(losses)``: the scalarized loss in scalarizer mode), as a torch closure returns
    its loss; any other result (``None``, detached values) leaves the gradients
    the closure wrote, which must be finite.
    """

    def evaluate() -> Any:
        with torch.enable_grad():
            result = closure()
        if not requires_grad(result):
            check_finite_grads(optimizer.param_groups, False)
            return result
        try:
            backward_and_check(result, backward_kwargs)
        except RuntimeError as error:
            if "second time" not in str(error):
                raise
            raise RuntimeError(
                "`closure` returned losses whose graph was already freed, e.g. by "
                "`loss.backward()` inside the closure. With JacobianOptimizer, return the losses "
                "without back-propagating them (the step back-propagates them by Jacobian "
                "descent), or call `opt.backward(losses)` in the closure and return detached "
                "values or None."
            ) from error
        return detached_sum(as_losses(result)) if returned is None else returned(result)

    return evaluate
