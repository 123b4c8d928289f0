"""The loss on lines and planes through the current parameters along random
*filter-normalized* directions (Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the loss
landscape of neural nets"): each filter (first-axis slice) of a Gaussian direction is rescaled to
the norm of the corresponding weight filter, so slices of differently scaled networks compare.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchvalley.curvature.function import (
    LossFunction,
    ParameterFunction,
    Vector,
    mask_seed,
    vector_add,
    vector_random,
)
from torchvalley.landscape.surfaces.grid import MetricFunction, alpha_grid

__all__ = [
    "LossSlice1D",
    "LossSlice2D",
    "filter_normalize",
    "filter_normalized_direction",
    "random_direction_slice_1d",
    "random_direction_slice_2d",
]


@dataclasses.dataclass(frozen=True)
class LossSlice1D:
    """The loss along ``w + α d``.

    Attributes:
        alphas: the α grid (float64, 1-D).
        losses: the loss at each α (float64).
        metrics: ``metric_fn`` at each α, or ``None``.
        direction: ``d``, shaped like the selected parameters.
    """

    alphas: torch.Tensor
    losses: torch.Tensor
    metrics: torch.Tensor | None
    direction: Vector = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class LossSlice2D:
    """The loss on the plane ``w + α d₁ + β d₂``.

    Attributes:
        alphas: the α grid along ``d₁`` (float64, 1-D).
        betas: the β grid along ``d₂`` (float64, 1-D).
        losses: ``losses[i, j]`` is the loss at ``(alphas[i], betas[j])`` (float64).
        metrics: ``metric_fn`` on the same grid, or ``None``.
        directions: ``(d₁, d₂)``.
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    losses: torch.Tensor
    metrics: torch.Tensor | None
    directions: tuple[Vector, Vector] = dataclasses.field(repr=False, compare=False)


# -- random directions ------------------------------------------------------------------------


def filter_normalize(direction: Vector, weights: Vector, include_1d: bool = False) -> Vector:
    """Filter normalization of ``direction`` against ``weights`` (Li et al. 2018, Sec. 4).

    For a tensor with two or more dimensions, each *filter* (slice along the first axis: a
    convolution's output channel, a linear layer's output row) is rescaled to the norm of the
    weights' filter, ``d_f ← d_f ‖w_f‖ / ‖d_f‖`` (a zero ``d_f`` stays zero). One-dimensional
    (and scalar) tensors, i.e. biases and normalization parameters, are zeroed by default;
    with ``include_1d=True`` their direction is the weight itself, as in Li et al.'s reference
    implementation.

    Args:
        direction: the raw direction, shaped like ``weights``.
        weights: the parameters the direction lives at.
        include_1d: keep 1-D tensors (as the weights themselves) instead of zeroing them.

    Returns:
        The normalized direction (new tensors).
    """
    out = []
    for d, w in zip(direction, weights, strict=True):
        if d.shape != w.shape:
            raise ValueError("Invalid direction: its shapes differ from the parameters'")
        if w.dim() <= 1:
            out.append(w.detach().clone() if include_1d else torch.zeros_like(d))
            continue
        d_norms = d.reshape(d.shape[0], -1).norm(dim=1)
        w_norms = w.detach().reshape(w.shape[0], -1).norm(dim=1)
        factor = torch.where(d_norms > 0, w_norms / d_norms.clamp_min(1e-300), 0.0)
        out.append(d * factor.reshape(-1, *([1] * (d.dim() - 1))).to(d.dtype))
    return tuple(out)


def _selected(model: nn.Module, parameters: Sequence[str] | None) -> tuple[str, ...]:
    named = dict(model.named_parameters())
    if parameters is None:
        return tuple(n for n, p in named.items() if p.requires_grad)
    unknown = [n for n in parameters if n not in named]
    if unknown:
        raise ValueError(f"Invalid parameters: not in the model: {unknown}")
    return tuple(parameters)


def filter_normalized_direction(
    model: nn.Module,
    *,
    parameters: Sequence[str] | None = None,
    include_1d: bool = False,
    generator: torch.Generator | None = None,
) -> Vector:
    """A random Gaussian direction, filter-normalized at the model's parameters (Li et al. 2018).

    Args:
        model: the network (not modified).
        parameters: names of the parameters the direction covers (default: all that require
            grad), in this order.
        include_1d: see :func:`filter_normalize`.
        generator: the source of randomness (drawn on the CPU); ``None`` uses a generator
            seeded with 0.

    Returns:
        A tuple of tensors shaped like the selected parameters.
    """
    names = _selected(model, parameters)
    named = dict(model.named_parameters())
    weights = tuple(named[n].detach() for n in names)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    return filter_normalize(vector_random(weights, generator), weights, include_1d=include_1d)


def _slice_losses(
    function: ParameterFunction,
    loss_fn: LossFunction,
    point: Vector,
    offsets: Sequence[tuple[float, Vector]],
    metric_fn: MetricFunction | None,
) -> tuple[float, float | None]:
    """Loss (and metric) at ``point + Σ c d`` over the offsets ``(c, d)``."""
    params = point
    for coefficient, direction in offsets:
        if coefficient != 0.0:  # α = 0 evaluates exactly at the point
            params = vector_add(params, direction, coefficient)
    loss = metric = None
    for weight, batch in zip(function.weights, function.batches, strict=True):
        outputs = function.outputs(params, batch)
        term = weight * loss_fn(outputs, batch[1])
        loss = term if loss is None else loss + term
        if metric_fn is not None:
            value = weight * torch.as_tensor(metric_fn(outputs, batch[1]))
            metric = value if metric is None else metric + value
    return float(loss), None if metric is None else float(metric)


def _direction_for(
    function: ParameterFunction,
    direction: Vector | None,
    include_1d: bool,
    generator: torch.Generator,
    name: str,
) -> Vector:
    point = function.point()
    if direction is None:
        return filter_normalize(vector_random(point, generator), point, include_1d=include_1d)
    direction = tuple(direction)
    if len(direction) != len(point) or any(
        d.shape != p.shape for d, p in zip(direction, point, strict=True)
    ):
        raise ValueError(f"Invalid {name}: expected tensors shaped like the selected parameters")
    return tuple(
        d.detach().to(device=p.device, dtype=p.dtype) for d, p in zip(direction, point, strict=True)
    )


def _slice_function(
    model: Any,
    loss_fn: Any,
    data: Any,
    parameters: Any,
    bn_mode: str,
    generator: torch.Generator | None,
) -> tuple[torch.Generator, ParameterFunction]:
    """The slice's generator (seeded 0 by default) and the loss as a function of the parameters,
    with train-mode masks seeded from that generator."""
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    seed = mask_seed(bn_mode, generator)
    function = ParameterFunction(
        model, loss_fn, data, parameters=parameters, bn_mode=bn_mode, seed=seed
    )
    return generator, function


def random_direction_slice_1d(
    model: nn.Module,
    loss_fn: LossFunction,
    data: Any,
    *,
    steps: int = 51,
    span: tuple[float, float] = (-1.0, 1.0),
    alphas: Sequence[float] | torch.Tensor | None = None,
    direction: Vector | None = None,
    include_1d: bool = False,
    parameters: Sequence[str] | None = None,
    bn_mode: str = "eval",
    metric_fn: MetricFunction | None = None,
    generator: torch.Generator | None = None,
) -> LossSlice1D:
    """The loss along ``w + α d`` for a filter-normalized random ``d`` (Li et al. 2018).

    Filter normalization makes the scale of α comparable across networks and across
    re-parametrizations that rescale filters, so the widths of two minima can be compared.
    The default grid is Li et al.'s ``-1:1:51``.

    Args:
        model: the network; ``w`` is its current parameters (not modified).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        data: the batch or batches.
        steps: grid points (at least 2) spanning ``span``, when ``alphas`` is not given.
        span: the α range.
        alphas: an explicit α grid.
        direction: a direction to use as given (shaped like the selected parameters); default
            a random filter-normalized one (:func:`filter_normalized_direction`).
        include_1d: see :func:`filter_normalize`.
        parameters: names of the parameters to move (default: all that require grad).
        bn_mode: ``"eval"`` or ``"train"`` (see :mod:`torchvalley.curvature.function`).
        metric_fn: optional ``metric_fn(outputs, targets) -> scalar`` (e.g. accuracy).
        generator: the source of randomness; ``None`` uses a generator seeded with 0. With
            ``bn_mode="train"`` it also seeds the dropout masks (the global RNG is untouched).

    Returns:
        A :class:`LossSlice1D`.

    Raises:
        ValueError: for ``steps < 2``, a bad ``span``/``alphas``/``direction``, or bad
            ``data``/``parameters``/``bn_mode``.
    """
    grid = alpha_grid("alphas", steps, span, alphas)
    generator, function = _slice_function(model, loss_fn, data, parameters, bn_mode, generator)
    d = _direction_for(function, direction, include_1d, generator, "direction")
    point = function.point()
    losses, metrics = [], []
    with torch.no_grad():
        for alpha in grid.tolist():
            loss, metric = _slice_losses(function, loss_fn, point, [(alpha, d)], metric_fn)
            losses.append(loss)
            metrics.append(metric)
    return LossSlice1D(
        alphas=grid,
        losses=torch.tensor(losses, dtype=torch.float64),
        metrics=None if metric_fn is None else torch.tensor(metrics, dtype=torch.float64),
        direction=d,
    )


def random_direction_slice_2d(
    model: nn.Module,
    loss_fn: LossFunction,
    data: Any,
    *,
    steps: int = 21,
    span: tuple[float, float] = (-1.0, 1.0),
    alphas: Sequence[float] | torch.Tensor | None = None,
    betas: Sequence[float] | torch.Tensor | None = None,
    directions: tuple[Vector, Vector] | None = None,
    include_1d: bool = False,
    parameters: Sequence[str] | None = None,
    bn_mode: str = "eval",
    metric_fn: MetricFunction | None = None,
    generator: torch.Generator | None = None,
) -> LossSlice2D:
    """The loss on the plane ``w + α d₁ + β d₂`` of two filter-normalized random directions.

    Li et al. (2018) draw the two directions independently: in high dimension they are nearly
    orthogonal. The grid is ``steps × steps`` over ``span × span`` unless ``alphas``/``betas``
    are given (Li et al. use ``-1:1:51`` on both axes; the default here is smaller, 21, since
    the cost is quadratic in ``steps``).

    Args:
        model: the network; ``w`` is its current parameters (not modified).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss.
        data: the batch or batches.
        steps: grid points per axis (at least 2), when ``alphas``/``betas`` are not given.
        span: the range of both axes.
        alphas: an explicit grid along ``d₁``.
        betas: an explicit grid along ``d₂``.
        directions: ``(d₁, d₂)`` to use as given; default two random filter-normalized ones.
        include_1d: see :func:`filter_normalize`.
        parameters: names of the parameters to move (default: all that require grad).
        bn_mode: ``"eval"`` or ``"train"``.
        metric_fn: optional ``metric_fn(outputs, targets) -> scalar``.
        generator: the source of randomness; ``None`` uses a generator seeded with 0.

    Returns:
        A :class:`LossSlice2D` with ``losses[i, j]`` at ``(alphas[i], betas[j])``.

    Raises:
        ValueError: as :func:`random_direction_slice_1d`, and for ``directions`` that are not
            a pair.
    """
    grid_a = alpha_grid("alphas", steps, span, alphas)
    grid_b = alpha_grid("betas", steps, span, betas)
    generator, function = _slice_function(model, loss_fn, data, parameters, bn_mode, generator)
    if directions is None:
        pair: tuple[Any, Any] = (None, None)
    else:
        if not isinstance(directions, (tuple, list)) or len(directions) != 2:
            raise ValueError("Invalid directions: expected a pair (d1, d2)")
        pair = (directions[0], directions[1])
    first = _direction_for(function, pair[0], include_1d, generator, "directions")
    second = _direction_for(function, pair[1], include_1d, generator, "directions")
    point = function.point()
    losses = torch.empty(len(grid_a), len(grid_b), dtype=torch.float64)
    metrics = None if metric_fn is None else torch.empty_like(losses)
    with torch.no_grad():
        for i, alpha in enumerate(grid_a.tolist()):
            for j, beta in enumerate(grid_b.tolist()):
                offsets = [(alpha, first), (beta, second)]
                loss, metric = _slice_losses(function, loss_fn, point, offsets, metric_fn)
                losses[i, j] = loss
                if metrics is not None:
                    metrics[i, j] = metric
    return LossSlice2D(
        alphas=grid_a,
        betas=grid_b,
        losses=losses,
        metrics=metrics,
        directions=(first, second),
    )
