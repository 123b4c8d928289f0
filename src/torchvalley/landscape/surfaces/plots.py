"""PNG figures of loss curves, slices, layer-wise paths and spectral densities, drawn with
matplotlib's object API
(``Figure`` + the Agg canvas: no ``pyplot`` state is touched; matplotlib is imported only when
plotting, ``pip install torchvalley[plots]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvalley.landscape.spectrum import SpectralDensity
from torchvalley.landscape.surfaces.interpolation import (
    InterpolationResult,
    LayerwiseInterpolationResult,
)
from torchvalley.landscape.surfaces.slices import LossSlice1D, LossSlice2D

__all__ = [
    "plot_layerwise_interpolation",
    "plot_loss_contour",
    "plot_loss_curve",
    "plot_spectral_density",
]


def _new_figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def plot_loss_curve(
    result: InterpolationResult | LossSlice1D,
    path: str | Path,
    *,
    title: str | None = None,
    log_scale: bool = False,
    xlabel: str = "α",
    loss_label: str = "loss",
    metric_label: str = "accuracy",
    dpi: int = 110,
) -> Path:
    """Plot a 1-D curve: the loss (left axis) and the metric, if any (right axis), against α.

    The layout of Li et al.'s (2018) ``plot_1D``; for an interpolation, dotted vertical lines
    mark the endpoints α = 0 and α = 1 when they are on the grid.

    Args:
        result: from :func:`linear_interpolation` or :func:`random_direction_slice_1d`.
        path: the PNG file to write (parent folders are created).
        title: the figure title.
        log_scale: a logarithmic loss axis.
        xlabel: the α axis label.
        loss_label: the loss axis label.
        metric_label: the metric axis label.
        dpi: the resolution.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    figure = _new_figure((6.0, 4.0))
    axes = figure.subplots()
    alphas = result.alphas.numpy()
    axes.plot(alphas, result.losses.numpy(), color="tab:blue", linewidth=1.8, label=loss_label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(loss_label, color="tab:blue")
    if log_scale:
        axes.set_yscale("log")
    if isinstance(result, InterpolationResult):
        for endpoint in (0.0, 1.0):
            if bool((result.alphas == endpoint).any()):
                axes.axvline(endpoint, color="grey", linestyle=":", linewidth=1)
    if result.metrics is not None:
        twin = axes.twinx()
        twin.plot(alphas, result.metrics.numpy(), color="tab:red", linewidth=1.5, linestyle="--")
        twin.set_ylabel(metric_label, color="tab:red")
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    return _save(figure, path, dpi)


def plot_loss_contour(
    result: LossSlice2D,
    path: str | Path,
    *,
    title: str | None = None,
    levels: int = 30,
    log_scale: bool = False,
    dpi: int = 110,
) -> Path:
    """Plot a 2-D slice: filled contours of the loss with contour lines on top (Li et al. 2018).

    Args:
        result: from :func:`random_direction_slice_2d`.
        path: the PNG file to write (parent folders are created).
        title: the figure title.
        levels: the number of contour levels.
        log_scale: contour ``log10`` of the loss (for losses spanning decades; needs positive
            losses).
        dpi: the resolution.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"Invalid levels: expected an integer >= 2, got {levels!r}")
    values = result.losses
    if log_scale:
        if not bool((values > 0).all()):
            raise ValueError("Invalid log_scale: the losses must be positive")
        values = values.log10()
    figure = _new_figure((5.5, 4.5))
    axes = figure.subplots()
    # losses[i, j] is at (alphas[i], betas[j]): x = α runs along the first axis, so transpose.
    z = values.numpy().T
    x, y = result.alphas.numpy(), result.betas.numpy()
    filled = axes.contourf(x, y, z, levels=levels, cmap="viridis")
    lines = axes.contour(x, y, z, levels=filled.levels, colors="black", linewidths=0.5)
    axes.clabel(lines, inline=True, fontsize=6, fmt="%.3g")
    figure.colorbar(filled, ax=axes, label="log10 loss" if log_scale else "loss")
    axes.plot([0.0], [0.0], marker="*", color="white", markeredgecolor="black", markersize=10)
    axes.set(xlabel="α (direction 1)", ylabel="β (direction 2)", aspect="equal")
    if title:
        axes.set_title(title)
    return _save(figure, path, dpi)


def plot_layerwise_interpolation(
    result: LayerwiseInterpolationResult,
    path: str | Path,
    *,
    title: str | None = None,
    log_scale: bool = False,
    dpi: int = 110,
) -> Path:
    """Plot layer-wise interpolation: one loss curve per group, plus "vary all" if computed.

    The figure of Vlaar & Frankle (2022): "Vary all", "Vary B1" … "Vary fc".

    Args:
        result: from :func:`layerwise_interpolation`.
        path: the PNG file to write (parent folders are created).
        title: the figure title.
        log_scale: a logarithmic loss axis.
        dpi: the resolution.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib import colormaps

    figure = _new_figure((6.5, 4.0))
    axes = figure.subplots()
    alphas = result.alphas.numpy()
    palette = colormaps["tab10" if len(result.losses) <= 10 else "tab20"]
    if result.full is not None:
        axes.plot(alphas, result.full.losses.numpy(), color="black", linewidth=2.2, label="all")
    for index, (name, losses) in enumerate(result.losses.items()):
        axes.plot(
            alphas, losses.numpy(), color=palette(index % palette.N), linewidth=1.5, label=name
        )
    axes.set(xlabel="α", ylabel="loss")
    if log_scale:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(title="vary", fontsize="small")
    axes.set_title(title or f"layer-wise interpolation (others at {result.others})")
    return _save(figure, path, dpi)


def plot_spectral_density(
    result: SpectralDensity,
    path: str | Path,
    *,
    sigma: float | None = None,
    points: int = 10000,
    title: str | None = None,
    floor: float = 1e-10,
    dpi: int = 110,
) -> Path:
    """Plot the smoothed eigenvalue density on a logarithmic density axis (PyHessian's style).

    Args:
        result: from :func:`spectral_density`.
        path: the PNG file to write (parent folders are created).
        sigma: the kernel's standard deviation (default :meth:`SpectralDensity.default_sigma`).
        points: grid points (:meth:`SpectralDensity.grid`).
        title: the figure title (default: the probes and Lanczos steps).
        floor: densities below ``floor × max`` are drawn at that level (the axis' bottom).
        dpi: the resolution.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = result.grid(points, sigma)
    values = result.density(grid, sigma)
    top = float(values.max())
    bottom = top * floor
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.semilogy(grid.numpy(), values.clamp_min(bottom).numpy(), linewidth=1.2)
    axes.set_ylim(bottom, top * 3.0)
    axes.set_xlabel("Eigenvalue")
    axes.set_ylabel("Density (log scale)")
    axes.set_title(
        title
        or f"Eigenvalue density (SLQ: {result.n_probes} probes × {result.nodes.shape[1]} steps)"
    )
    axes.grid(True, which="major", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path
