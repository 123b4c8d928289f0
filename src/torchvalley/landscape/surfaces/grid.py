"""What the surfaces share: the grid of coefficients along a direction and the metric type."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from torchvalley.validation import check_int_at_least

__all__ = ["MetricFunction", "alpha_grid"]

MetricFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``metric_fn(outputs, targets) -> scalar`` (e.g. accuracy), evaluated next to the loss."""


def alpha_grid(
    name: str, steps: int, span: Sequence[float], alphas: Sequence[float] | torch.Tensor | None
) -> torch.Tensor:
    """The explicit ``alphas`` (named ``name``), else ``steps`` points spanning ``span``."""
    if alphas is not None:
        try:
            grid = torch.as_tensor(alphas, dtype=torch.float64).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"Invalid {name}: expected a sequence of numbers") from None
        if grid.numel() == 0 or not bool(torch.isfinite(grid).all()):
            raise ValueError(f"Invalid {name}: expected a non-empty sequence of finite numbers")
        return grid.clone()
    check_int_at_least("steps", steps, 2)
    try:
        start, end = (float(v) for v in span)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid span: expected a pair (start, end), got {span!r}") from None
    if not (torch.isfinite(torch.tensor([start, end])).all() and start < end):
        raise ValueError(f"Invalid span: {span!r} (finite, start < end)")
    grid = torch.linspace(start, end, steps, dtype=torch.float64)
    grid[0], grid[-1] = start, end  # exact endpoints
    return grid
