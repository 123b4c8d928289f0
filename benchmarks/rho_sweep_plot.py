"""Test accuracy vs the SAM radius ρ: a plot and a markdown table from a results store.

Reads a store written by ``torchvalley bench`` (for example a ρ sweep of ``sam``, ``sam_on`` and
``monge_sam`` on ``mnist1d_cnn``), aggregates it with :func:`torchvalley.bench.report.summarize`
and, for one task:

* plots the mean final test metric over seeds against ρ (log x axis), one line per method with a
  ±1 standard deviation band (ddof=1); specs without a ``rho`` (e.g. the SGD baseline) are drawn
  as horizontal lines with their band;
* prints a markdown table, method × ρ, of ``mean ± std (n)``, the best ρ of each method marked
  in bold (best by mean; with few seeds, neighbours within a std are just as good).

A method is the registry name plus every hyperparameter except ``rho``, so two sweeps with
different base learning rates are kept apart. Only finished runs count.

Usage::

    python benchmarks/rho_sweep_plot.py --store results/sam_rho_sweep.db --task mnist1d_cnn \\
        --out docs/figures/rho_sweep_mnist1d_cnn.png [--table FILE.md] [--metric best] [--zoom 3]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchvalley.bench.report import summarize

METRIC_KEYS = {"final": "final_test_metric", "best": "best_test_metric"}


def _method_label(row: Mapping[str, Any]) -> str:
    others = {k: v for k, v in row["hyperparameters"].items() if k != "rho"}
    if not others:
        return row["optimizer"]
    text = ",".join(f"{k}={v}" for k, v in sorted(others.items()))
    return f"{row['optimizer']}:{text}"


def collect(
    summary_rows: Sequence[Mapping[str, Any]], metric: str = "final"
) -> tuple[dict[str, list[tuple[float, dict[str, Any]]]], dict[str, dict[str, Any]]]:
    """Split a task's summary rows into swept methods and baselines.

    Returns:
        ``({method: [(rho, stat), ...] sorted by rho}, {baseline label: stat})`` where ``stat``
        is the ``{"mean", "std", "n", "values"}`` of the chosen metric.
    """
    key = METRIC_KEYS[metric]
    methods: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    baselines: dict[str, dict[str, Any]] = {}
    for row in summary_rows:
        stat = row[key]
        if stat["n"] == 0:
            continue
        rho = row["hyperparameters"].get("rho")
        if rho is None:
            baselines[row["spec_label"]] = stat
        else:
            methods.setdefault(_method_label(row), []).append((float(rho), stat))
    for points in methods.values():
        points.sort(key=lambda point: point[0])
    return methods, baselines


def _cell(stat: Mapping[str, Any], scale: float, bold: bool = False) -> str:
    mean = stat["mean"] * scale
    std = stat["std"]
    text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std * scale:.2f}"
    text = f"**{text}**" if bold else text
    return f"{text} ({stat['n']})"


def markdown_table(
    methods: Mapping[str, Sequence[tuple[float, Mapping[str, Any]]]],
    baselines: Mapping[str, Mapping[str, Any]],
    *,
    higher_is_better: bool,
    scale: float = 100.0,
) -> str:
    """Method × ρ table of ``mean ± std (n)``, best ρ per method in bold; baselines below."""
    rhos = sorted({rho for points in methods.values() for rho, _ in points})
    lines = [
        "| method | " + " | ".join(f"ρ={rho:g}" for rho in rhos) + " | best ρ |",
        "|---|" + "---|" * (len(rhos) + 1),
    ]
    for method, points in methods.items():
        by_rho = dict(points)
        means = {rho: stat["mean"] for rho, stat in points}
        best = (max if higher_is_better else min)(means, key=means.__getitem__)
        cells = [_cell(by_rho[rho], scale, rho == best) if rho in by_rho else "—" for rho in rhos]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {best:g} |")
    for label, stat in baselines.items():
        lines.append(f"| {label} (no ρ) | " + _cell(stat, scale) + " |" + " |" * len(rhos))
    return "\n".join(lines) + "\n"


def zoom_limits(
    methods: Mapping[str, Sequence[tuple[float, Mapping[str, Any]]]],
    baselines: Mapping[str, Mapping[str, Any]],
    *,
    scale: float,
    window: float,
) -> tuple[float, float] | None:
    """y-limits around the good region: the bands of every point (and baseline) whose mean is
    within ``window`` (in plotted units) of the best mean; ``None`` without points."""
    stats = [stat for points in methods.values() for _, stat in points] + list(baselines.values())
    means = [stat["mean"] * scale for stat in stats]
    if not means:
        return None
    top = max(means)
    kept = [stat for stat, mean in zip(stats, means, strict=True) if mean >= top - window]
    low = min((stat["mean"] - (stat["std"] or 0.0)) * scale for stat in kept)
    high = max((stat["mean"] + (stat["std"] or 0.0)) * scale for stat in kept)
    pad = 0.05 * (high - low) + 1e-9
    return low - pad, high + pad


def plot(
    methods: Mapping[str, Sequence[tuple[float, Mapping[str, Any]]]],
    baselines: Mapping[str, Mapping[str, Any]],
    path: Path,
    *,
    title: str,
    ylabel: str,
    scale: float = 100.0,
    zoom_window: float | None = None,
    unit: str = "",
) -> None:
    """Mean ± std vs ρ (log x), one line per method; baselines as horizontal bands.

    With ``zoom_window`` a second panel repeats the plot with the y-axis limited to
    :func:`zoom_limits` (differences of a few tenths next to collapses at large ρ).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limits = (
        zoom_limits(methods, baselines, scale=scale, window=zoom_window)
        if zoom_window is not None
        else None
    )
    panels = 2 if limits is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.3), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    all_rhos = sorted({rho for points in methods.values() for rho, _ in points})
    for panel, ax in enumerate(axes[0]):
        for index, (method, points) in enumerate(methods.items()):
            colour = colours[index % len(colours)]
            rhos = [rho for rho, _ in points]
            means = [stat["mean"] * scale for _, stat in points]
            stds = [(stat["std"] or 0.0) * scale for _, stat in points]
            ax.plot(rhos, means, marker="o", markersize=4, color=colour, label=method)
            ax.fill_between(
                rhos,
                [m - s for m, s in zip(means, stds, strict=True)],
                [m + s for m, s in zip(means, stds, strict=True)],
                color=colour,
                alpha=0.18,
                linewidth=0,
            )
        if all_rhos:
            ax.set_xscale("log")
            ax.set_xlim(min(all_rhos) / 1.3, max(all_rhos) * 1.3)
            ax.set_xticks(all_rhos, [f"{rho:g}" for rho in all_rhos], fontsize=8)
            ax.minorticks_off()
        for index, (label, stat) in enumerate(baselines.items()):
            mean, std = stat["mean"] * scale, (stat["std"] or 0.0) * scale
            colour = ("black", "grey", "dimgray")[index % 3]
            ax.axhline(mean, color=colour, linestyle="--", linewidth=1.2, label=f"{label} (no ρ)")
            ax.axhspan(mean - std, mean + std, color=colour, alpha=0.10, linewidth=0)
        ax.set_xlabel("ρ (log scale)")
        ax.grid(True, alpha=0.3)
        if panel == 0:
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7, loc="best")
        else:
            assert limits is not None
            ax.set_ylim(*limits)
            ax.set_title(f"zoom: means within {zoom_window:g}{unit} of the best", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the plot and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--store", type=Path, default=Path("results/sam_rho_sweep.db"))
    parser.add_argument("--task", default="mnist1d_cnn")
    parser.add_argument(
        "--out", type=Path, help="the PNG (default docs/figures/rho_sweep_TASK.png)"
    )
    parser.add_argument("--table", type=Path, help="also write the markdown table here")
    parser.add_argument(
        "--metric", choices=tuple(METRIC_KEYS), default="final", help="final or best test metric"
    )
    parser.add_argument(
        "--zoom",
        type=float,
        default=3.0,
        help="add a panel zoomed on the means within this many plotted units (percentage "
        "points for accuracy) of the best one; 0 for none",
    )
    args = parser.parse_args(argv)
    summary = summarize(args.store, tasks=[args.task])[args.task]
    if not summary["rows"]:
        parser.error(f"no runs of {args.task!r} in {args.store}")
    methods, baselines = collect(summary["rows"], args.metric)
    shared = {label.partition(":")[2] for label in methods}
    if len(shared) == 1 and shared != {""}:
        # one set of other hyperparameters for every method: name methods by optimizer only
        methods = {label.partition(":")[0]: points for label, points in methods.items()}
        note = f"; all with {shared.pop()}"
    else:
        note = ""
    metric_name = summary["metric_name"] or "metric"
    percent = metric_name == "accuracy"
    scale = 100.0 if percent else 1.0
    seeds = sorted({n for points in methods.values() for _, stat in points for n in [stat["n"]]})
    unit = " (%)" if percent else ""
    ylabel = f"{args.metric} test {metric_name}{unit}, mean ± std"
    title = f"{args.task}: {args.metric} test {metric_name} vs ρ (seeds per point: {seeds})"
    if note:
        title += "\n" + note.removeprefix("; ")
    out = args.out or Path("docs/figures") / f"rho_sweep_{args.task}.png"
    plot(
        methods,
        baselines,
        out,
        title=title,
        ylabel=ylabel,
        scale=scale,
        zoom_window=args.zoom if args.zoom > 0 else None,
        unit=" points" if percent else "",
    )
    table = markdown_table(
        methods, baselines, higher_is_better=summary["higher_is_better"], scale=scale
    )
    print(table, end="")
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table)
    print(f"plot: {out} ({math.ceil(out.stat().st_size / 1024)} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
