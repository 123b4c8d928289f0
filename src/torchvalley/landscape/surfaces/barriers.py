"""Summaries of one loss curve along a path: its barrier, its largest rise, monotonicity.

:func:`path_barrier` reduces a curve ``L(α_0), …, L(α_n)`` (from
:func:`~torchvalley.landscape.surfaces.interpolation.linear_interpolation`, one curve of
:func:`~torchvalley.landscape.surfaces.interpolation.layerwise_interpolation`, or any sampled
path) to the numbers the interpolation literature reports:

* **chord barrier** (Frankle et al. 2020, "Linear mode connectivity and the lottery ticket
  hypothesis"): ``max_α [L(α) − ((1 − t) L(α_0) + t L(α_n))]`` with ``t = (α − α_0)/(α_n − α_0)``,
  the height of the curve above the straight line joining its endpoint values. It is ``≥ 0`` on
  a grid (both endpoints give 0) and ``0`` for a convex curve.
* **rise** (the non-monotonicity of Lucas et al. 2021, "Analyzing monotonic linear interpolation
  in neural network loss landscapes"; Vlaar & Frankle 2022's "bump"):
  ``max_{i ≤ j} [L(α_j) − L(α_i)]``, the largest increase met when walking the path forward.
  It is 0 exactly when the sampled curve never goes up.
* **peak above start**: ``max_α L(α) − L(α_0)``, how far the path climbs above its starting
  loss (for an init → final path: above the loss at initialization).
* **monotonic**: ``rise ≤ tol``.

Everything is computed on the sampled grid (no interpolation between grid points), in float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["PathBarrier", "path_barrier"]


@dataclasses.dataclass(frozen=True)
class PathBarrier:
    """The barrier statistics of one sampled loss curve (see the module doc).

    Attributes:
        chord_barrier: ``max_α [L(α) − chord(α)]`` (``≥ 0``).
        chord_barrier_alpha: the α where it is reached (the first such grid point).
        rise: ``max_{i ≤ j} [L(α_j) − L(α_i)]`` (``≥ 0``).
        rise_from: the α where that rise starts.
        rise_to: the α where it ends.
        peak_above_start: ``max_α L(α) − L(α_0)`` (``≥ 0``).
        peak_alpha: the α of the largest loss.
        monotonic: ``rise ≤ tol``.
        tol: the tolerance used for ``monotonic``.
        start_loss: ``L(α_0)``.
        end_loss: ``L(α_n)``.
    """

    chord_barrier: float
    chord_barrier_alpha: float
    rise: float
    rise_from: float
    rise_to: float
    peak_above_start: float
    peak_alpha: float
    monotonic: bool
    tol: float
    start_loss: float
    end_loss: float


def _as_curve(
    losses: Any, alphas: Sequence[float] | torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, losses) as float64 1-D tensors, checked."""
    if alphas is None and hasattr(losses, "alphas") and hasattr(losses, "losses"):
        alphas, losses = losses.alphas, losses.losses
    try:
        curve = torch.as_tensor(losses, dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            "Invalid losses: expected an InterpolationResult or a sequence of numbers"
        ) from None
    if curve.numel() < 2:
        raise ValueError(f"Invalid losses: need at least 2 points, got {curve.numel()}")
    if not bool(torch.isfinite(curve).all()):
        raise ValueError("Invalid losses: every value must be finite")
    if alphas is None:
        grid = torch.linspace(0.0, 1.0, curve.numel(), dtype=torch.float64)
    else:
        try:
            grid = torch.as_tensor(alphas, dtype=torch.float64).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError("Invalid alphas: expected a sequence of numbers") from None
        if grid.shape != curve.shape:
            raise ValueError(f"Invalid alphas: {grid.numel()} values for {curve.numel()} losses")
        if not bool(torch.isfinite(grid).all()) or not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError("Invalid alphas: expected finite, strictly increasing values")
    return grid, curve


def path_barrier(
    losses: Any,
    alphas: Sequence[float] | torch.Tensor | None = None,
    *,
    tol: float = 0.0,
) -> PathBarrier:
    """Barrier height, largest rise and monotonicity of a loss curve sampled along a path.

    Args:
        losses: an :class:`~torchvalley.landscape.surfaces.interpolation.InterpolationResult`
            (its ``alphas`` are used), or the loss at each grid point (at least 2, finite).
        alphas: the grid (strictly increasing, as many as ``losses``); default: ``losses``'
            own grid for a result, else evenly spaced on ``[0, 1]``.
        tol: the largest rise (in loss units, ``≥ 0``) still counted as monotonic.

    Returns:
        A :class:`PathBarrier`.

    Raises:
        ValueError: for bad ``losses``, ``alphas`` or ``tol``.

    Example:
        >>> b = path_barrier([2.0, 2.5, 1.0])  # up by 0.5, then down
        >>> b.chord_barrier, b.rise, b.monotonic
        (1.0, 0.5, False)
    """
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0.0:
        raise ValueError(f"Invalid tol: expected a number >= 0, got {tol!r}")
    if not math.isfinite(float(tol)):
        raise ValueError(f"Invalid tol: expected a finite number, got {tol!r}")
    grid, curve = _as_curve(losses, alphas)
    start, end = curve[0], curve[-1]
    t = (grid - grid[0]) / (grid[-1] - grid[0])
    above_chord = curve - ((1.0 - t) * start + t * end)
    above_chord[0] = above_chord[-1] = 0.0  # exactly on the chord at the endpoints
    chord_index = int(torch.argmax(above_chord))
    # Largest forward rise: the loss at j minus the lowest loss at or before j (running minimum).
    running_min, argmin_index = torch.cummin(curve, dim=0)
    rises = curve - running_min
    rise_to = int(torch.argmax(rises))
    rise = float(rises[rise_to])
    rise_from = int(argmin_index[rise_to])
    peak_index = int(torch.argmax(curve))
    return PathBarrier(
        chord_barrier=float(above_chord[chord_index]),
        chord_barrier_alpha=float(grid[chord_index]),
        rise=rise,
        rise_from=float(grid[rise_from]),
        rise_to=float(grid[rise_to]),
        peak_above_start=float(curve[peak_index] - start),
        peak_alpha=float(grid[peak_index]),
        monotonic=rise <= float(tol),
        tol=float(tol),
        start_loss=float(start),
        end_loss=float(end),
    )
