"""Benchmark reports from a results store: Markdown tables, a JSON summary and PNG plots.

Per task there is one table row per optimizer spec (and run configuration: epochs, batch size,
data seed). Aggregates are over the runs that *finished*; diverged and failed runs are counted
in the ``seeds`` column (``3 (+2 diverged)``) but not averaged, since their final numbers are
meaningless. Spreads are sample standard deviations (``ddof=1``); with a single seed the table
shows ``± 0†`` and the JSON ``"std": null``. Rows are sorted by mean final test metric, best
first (direction: the ``higher_is_better`` recorded with the runs, else the registered task's,
else ``metric_name == "accuracy"``); specs without a finished run come last.

Methods are named by short labels (the optimizer's name, with the settings that tell its rows
apart when it has several); a table under each task gives every label's full spec. Plots use the
short labels and constrained layout, so legends and tick labels stay inside the figure.

Timing: each run records its torch thread count and process CPU time. A ``ms / step`` cell is
marked ‡ (noisy) when its seeds' spread exceeds :data:`NOISY_CV` of the mean, or when the runs
got less than :data:`BUSY_CPU_SHARE` of their threads' CPU time (they waited for a shared CPU).

Runs stored under an older spelling of a spec (before labels were canonical) are grouped with
the canonical label. Files are written atomically (a temporary file, then ``os.replace``), so a
report is either the old one or the new one, never half written.

Plots use matplotlib's object-oriented API with the Agg canvas (no ``pyplot``), so building a
report never changes the caller's matplotlib backend or global figure state. Without
matplotlib, the tables and the JSON are still written and the report says the plots were
skipped.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from torchvalley.bench.store import Store
from torchvalley.bench.tasks import get_task

__all__ = ["BUSY_CPU_SHARE", "NOISY_CV", "Report", "build_report", "format_table", "summarize"]

_ONE_SEED_MARK = "†"
_NOISY_MARK = "‡"

#: A timing cell is noisy when the seeds' sample std exceeds this fraction of the mean.
NOISY_CV = 0.2
#: ... or when the runs' CPU time was below this share of train time × threads (CPU contention).
BUSY_CPU_SHARE = 0.7

#: Short labels longer than this fall back to ``name (k)``.
_SHORT_LABEL_WIDTH = 28


@dataclasses.dataclass
class Report:
    """A written report.

    Attributes:
        markdown: the text of ``report.md``.
        markdown_path: path of ``report.md``.
        json_path: path of ``report.json``.
        plot_paths: the PNG files written (empty when matplotlib is missing).
        summary: what :func:`summarize` returned (task -> metric info and rows).
        messages: notes for the user, e.g. that plots were skipped.
    """

    markdown: str
    markdown_path: Path
    json_path: Path
    plot_paths: list[Path]
    summary: dict[str, dict[str, Any]]
    messages: list[str]


# -- aggregation ------------------------------------------------------------------------------


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _stat(values: Iterable[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` over the finite values; std is ddof=1 (None if n<2)."""
    kept = [v for v in (_finite_or_none(value) for value in values) if v is not None]
    array = np.asarray(kept, dtype=float)
    return {
        "mean": float(array.mean()) if array.size else None,
        "std": float(array.std(ddof=1)) if array.size >= 2 else None,
        "n": int(array.size),
        "values": kept,
    }


def _direction(task: str, runs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether higher metric values are better for ``task``."""
    recorded = {run["higher_is_better"] for run in runs if run.get("higher_is_better") is not None}
    if len(recorded) == 1:
        return recorded.pop()
    try:
        return get_task(task).higher_is_better
    except ValueError:
        return runs[0]["metric_name"] == "accuracy" if runs else True


def _target(task: str, runs: Sequence[Mapping[str, Any]]) -> float | None:
    recorded = {run["target"] for run in runs if run.get("target") is not None}
    if len(recorded) == 1:
        return recorded.pop()
    try:
        return get_task(task).target
    except ValueError:
        return None


def _per_step(numerator: Any, steps: Any, scale: float = 1.0) -> float | None:
    if numerator is None or not steps:
        return None
    return scale * float(numerator) / float(steps)


def _summarize_group(
    task: str, runs: Sequence[Mapping[str, Any]], higher_is_better: bool
) -> dict[str, Any]:
    """One table row: the aggregates over one spec's (and configuration's) runs."""
    first = runs[0]
    finished = [run for run in runs if run["status"] == "finished"]
    reached = [run for run in finished if run["time_to_target_s"] is not None]
    counts = {
        status: sum(run["status"] == status for run in runs)
        for status in ("finished", "diverged", "failed", "running")
    }
    return {
        "task": task,
        "spec_label": first["spec_label"],
        "label": first["spec_label"],
        "optimizer": first["optimizer"],
        "hyperparameters": first["hyperparameters"],
        "epochs": first["epochs"],
        "batch_size": first["batch_size"],
        "data_seed": first["data_seed"],
        "metric_name": first["metric_name"],
        "higher_is_better": higher_is_better,
        "n_runs": len(runs),
        "n_finished": counts["finished"],
        "n_diverged": counts["diverged"],
        "n_failed": counts["failed"],
        "n_running": counts["running"],
        "seeds": sorted(run["seed"] for run in finished),
        "final_test_metric": _stat(run["test_metric"] for run in finished),
        "best_test_metric": _stat(run["best_test_metric"] for run in finished),
        "final_train_loss": _stat(run["train_loss"] for run in finished),
        "final_test_loss": _stat(run["test_loss"] for run in finished),
        "time_to_target_s": _stat(run["time_to_target_s"] for run in reached),
        "steps_to_target": _stat(run["steps_to_target"] for run in reached),
        "epoch_to_target": _stat(run["epoch_to_target"] for run in reached),
        "n_reached": len(reached),
        "ms_per_step": _stat(
            _per_step(run["train_time_s"], run["steps"], 1000.0) for run in finished
        ),
        # One pass = one forward and one backward (a closure call): SGD 1, SAM 2.
        "passes_per_step": _stat(
            _per_step(run["forward_passes"] or 0, run["steps"]) for run in finished
        ),
        "train_time_s": _stat(run["train_time_s"] for run in finished),
        "wall_time_s": _stat(run["wall_time_s"] for run in finished),
        "num_threads": sorted({run.get("num_threads") for run in finished} - {None}),
        # CPU time per second of training and per thread: 1 = every thread computed throughout.
        "cpu_share": _stat(
            run["cpu_time_s"] / (run["train_time_s"] * run["num_threads"])
            for run in finished
            if run.get("cpu_time_s") is not None and run.get("num_threads") and run["train_time_s"]
        ),
        "runs": [
            {
                key: run[key]
                for key in (
                    "id",
                    "seed",
                    "status",
                    "test_metric",
                    "best_test_metric",
                    "train_loss",
                    "test_loss",
                    "time_to_target_s",
                    "steps_to_target",
                    "epoch_to_target",
                    "train_time_s",
                    "wall_time_s",
                    "steps",
                    "forward_passes",
                    "backward_passes",
                    "num_threads",
                    "cpu_time_s",
                    "error",
                )
            }
            for run in sorted(runs, key=lambda run: run["seed"])
        ],
    }


def _noisy(row: Mapping[str, Any]) -> bool:
    """Whether a row's timing should not be trusted (see :data:`NOISY_CV`)."""
    stat, share = row["ms_per_step"], row.get("cpu_share", {"n": 0})
    spread = stat["n"] >= 2 and stat["mean"] and stat["std"] > NOISY_CV * stat["mean"]
    contended = share["n"] > 0 and share["mean"] < BUSY_CPU_SHARE
    return bool(spread or contended)


def _sort_rows(rows: list[dict[str, Any]], higher_is_better: bool) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> tuple[int, float, str]:
        mean = row["final_test_metric"]["mean"]
        if mean is None:
            return (1, 0.0, row["label"])
        return (0, -mean if higher_is_better else mean, row["label"])

    return sorted(rows, key=key)


def _open_existing(path: str | os.PathLike[str]) -> Store:
    # Opening a Store creates the file; for a report a missing file is a typo, not a new store.
    if str(path) != ":memory:" and not Path(path).is_file():
        raise FileNotFoundError(f"no results store at {str(path)!r}")
    return Store(path)


def _canonical_label(label: str) -> str:
    """A stored spec label in today's canonical spelling (unchanged if it does not parse)."""
    from torchvalley.bench.specs import OptimizerSpec

    try:
        return OptimizerSpec.parse(label).label
    except Exception:  # an unregistered optimizer, a class path: keep the stored text
        return label


def _short_labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Short, unique method names: the optimizer, plus the settings that differ between its rows."""
    from torchvalley.bench.specs import _split_top_level

    def settings(row: Mapping[str, Any]) -> dict[str, str]:
        _, _, rest = row["spec_label"].partition(":")
        items = _split_top_level(rest) if rest else []
        return dict(item.partition("=")[::2] for item in items)

    by_name: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_name.setdefault(row["optimizer"], []).append(index)
    labels = [""] * len(rows)
    for name, indices in by_name.items():
        if len(indices) == 1:
            labels[indices[0]] = name
            continue
        parsed = [settings(rows[index]) for index in indices]
        keys = sorted({key for items in parsed for key in items})
        differing = [key for key in keys if len({items.get(key) for items in parsed}) > 1]
        candidates = [
            f"{name} " + ",".join(f"{key}={items.get(key, '·')}" for key in differing)
            for items in parsed
        ]
        fits = all(len(candidate) <= _SHORT_LABEL_WIDTH for candidate in candidates)
        if not differing or not fits or len(set(candidates)) < len(candidates):
            candidates = [f"{name} ({number})" for number in range(1, len(indices) + 1)]
        for index, candidate in zip(indices, candidates, strict=True):
            labels[index] = candidate
    return labels


def summarize(
    store: Store | str | os.PathLike[str], *, tasks: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Aggregate a store's runs per task and spec.

    Args:
        store: a :class:`Store` or the path of one.
        tasks: only these tasks (default: every task with runs, sorted).

    Raises:
        FileNotFoundError: if ``store`` is a path and there is no file there.

    Returns:
        ``{task: {"metric_name", "higher_is_better", "target", "n_runs", "rows"}}``; ``rows``
        are sorted best first and can be given to :func:`format_table`. Each row holds, for the
        finished runs, ``{"mean", "std", "n", "values"}`` of ``final_test_metric``,
        ``best_test_metric``, ``final_train_loss``, ``final_test_loss``, ``ms_per_step``,
        ``passes_per_step``, ``train_time_s``, ``wall_time_s`` and, over the runs that reached
        the target, ``time_to_target_s``, ``steps_to_target``, ``epoch_to_target``; plus counts
        by status, ``n_reached`` and the per-seed values in ``runs``.
    """
    if not isinstance(store, Store):
        with _open_existing(store) as opened:
            return summarize(opened, tasks=tasks)
    all_runs = store.runs()
    names = sorted({run["task"] for run in all_runs}) if tasks is None else list(tasks)
    summary: dict[str, dict[str, Any]] = {}
    for task in names:
        runs = [run for run in all_runs if run["task"] == task]
        higher_is_better = _direction(task, runs)
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        canonical: dict[str, str] = {}
        for run in runs:
            label = canonical.setdefault(run["spec_label"], _canonical_label(run["spec_label"]))
            config = (label, run["epochs"], run["batch_size"], run["data_seed"])
            groups.setdefault(config, []).append({**run, "spec_label": label})
        rows = [_summarize_group(task, group, higher_is_better) for group in groups.values()]
        configs = {(row["epochs"], row["batch_size"], row["data_seed"]) for row in rows}
        if len(configs) > 1:
            # Runs of one task under different settings: say which row is which.
            for row in rows:
                row["label"] = (
                    f"{row['spec_label']} [epochs={row['epochs']}, "
                    f"batch_size={row['batch_size']}, data_seed={row['data_seed']}]"
                )
        rows = _sort_rows(rows, higher_is_better)
        for row, short in zip(rows, _short_labels(rows), strict=True):
            row["short_label"] = short
            if len(configs) > 1:
                row["short_label"] += f" [{row['epochs']} ep]"
        summary[task] = {
            "metric_name": runs[0]["metric_name"] if runs else None,
            "higher_is_better": higher_is_better,
            "target": _target(task, runs),
            "n_runs": len(runs),
            "rows": rows,
        }
    return summary


# -- tables -----------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _mean_std(stat: Mapping[str, Any], digits: int = 4) -> str:
    if stat["n"] == 0:
        return "—"
    if stat["n"] == 1:
        return f"{_number(stat['mean'], digits)} ± 0{_ONE_SEED_MARK}"
    return f"{_number(stat['mean'], digits)} ± {_number(stat['std'], 2)}"


def _seeds_cell(row: Mapping[str, Any]) -> str:
    extra = [
        f"{row[f'n_{status}']} {status}"
        for status in ("diverged", "failed", "running")
        if row[f"n_{status}"]
    ]
    return f"{row['n_finished']}" + (f" (+{', '.join(extra)})" if extra else "")


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`summarize` rows (one task's), as in the report.

    Columns: method (short label; :func:`format_specs` lists the full specs), seeds (finished,
    plus diverged/failed/running counts), final and best test metric, final train loss, time to
    target over the seeds that reached it and how many did, milliseconds and passes
    (forward+backward pairs) per step, training time per run, threads and CPU share. Cells are
    ``mean ± std``; footnotes mark single-seed cells (†) and noisy timings (‡).
    """
    if not rows:
        return "(no runs)"
    metric = rows[0]["metric_name"]
    header = [
        "method",
        "seeds",
        f"final test {metric}",
        f"best test {metric}",
        "final train loss",
        "time to target (s)",
        "reached",
        "ms / step",
        "fwd+bwd passes / step",
        "train time (s)",
        "threads",
        "CPU share",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|",
    ]
    for row in rows:
        reached = f"{row['n_reached']}/{row['n_finished']}"
        ms_per_step = _mean_std(row["ms_per_step"], 3)
        if _noisy(row):
            ms_per_step += f" {_NOISY_MARK}"
        share = row.get("cpu_share", {"n": 0})
        cells = [
            _escape(row.get("short_label", row["label"])),
            _seeds_cell(row),
            _mean_std(row["final_test_metric"]),
            _mean_std(row["best_test_metric"]),
            _mean_std(row["final_train_loss"]),
            _mean_std(row["time_to_target_s"], 3),
            reached,
            ms_per_step,
            _mean_std(row["passes_per_step"], 3),
            _mean_std(row["train_time_s"], 3),
            ", ".join(map(str, row.get("num_threads", []))) or "—",
            "—" if not share["n"] else f"{share['mean']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if any(row["n_finished"] == 1 or row["n_reached"] == 1 for row in rows):
        text += f"\n\n{_ONE_SEED_MARK} a single seed: no spread to show."
    if any(_noisy(row) for row in rows):
        text += (
            f"\n\n{_NOISY_MARK} noisy timing: the seeds differ by more than "
            f"{NOISY_CV:.0%} of the mean, or the runs got under {BUSY_CPU_SHARE:.0%} of their "
            "threads' CPU time (a shared, busy machine); compare such cells with care."
        )
    return text


def format_specs(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table from each row's short label to its full spec (and run settings)."""
    lines = ["| method | spec |", "|---|---|"]
    for row in rows:
        short = _escape(row.get("short_label", row["label"]))
        lines.append(f"| {short} | `{_escape(row['label'])}` |")
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------------


def _curves(store: Store, row: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Per-epoch mean, std, min and max of test metric and train loss over finished runs."""
    by_epoch: dict[int, dict[str, list[float]]] = {}
    for run in row["runs"]:
        if run["status"] != "finished":
            continue
        for record in store.epochs(run["id"]):
            slot = by_epoch.setdefault(record["epoch"], {"test_metric": [], "train_loss": []})
            for key in slot:
                value = _finite_or_none(record[key])
                if value is not None:
                    slot[key].append(value)
    curves: dict[str, list[Any]] = {"epoch": sorted(by_epoch)}
    for key in ("test_metric", "train_loss"):
        stats = [_stat(by_epoch[epoch][key]) for epoch in curves["epoch"]]
        curves[f"{key}_mean"] = [stat["mean"] for stat in stats]
        curves[f"{key}_std"] = [stat["std"] for stat in stats]
        curves[f"{key}_min"] = [min(stat["values"], default=None) for stat in stats]
        curves[f"{key}_max"] = [max(stat["values"], default=None) for stat in stats]
    return curves


def _as_array(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([math.nan if value is None else value for value in values], dtype=float)


def _colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(index % palette.N) for index in range(count)]


def _safe_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task)


def _plot_curves(
    task: str, info: Mapping[str, Any], curves: Sequence[Mapping[str, Any]], path: Path
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(figure)
    metric_axes, loss_axes = figure.subplots(1, 2)
    rows = info["rows"]
    positive_losses = True
    for row, curve, colour in zip(rows, curves, _colours(len(rows)), strict=True):
        if not curve["epoch"]:
            continue
        epochs = np.asarray(curve["epoch"], dtype=float)
        for axes, key in ((metric_axes, "test_metric"), (loss_axes, "train_loss")):
            axes.plot(
                epochs,
                _as_array(curve[f"{key}_mean"]),
                color=colour,
                linewidth=1.5,
                label=row.get("short_label", row["label"]) if axes is metric_axes else None,
            )
            # A min-max band rather than mean ± std: with a handful of seeds it shows every
            # seed's range, never leaves the metric's domain and works on a log scale.
            low, high = _as_array(curve[f"{key}_min"]), _as_array(curve[f"{key}_max"])
            if np.any(high > low):
                axes.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
        losses = _as_array(curve["train_loss_min"])
        positive_losses &= bool(np.all(losses[np.isfinite(losses)] > 0))
    metric = info["metric_name"]
    if info.get("target") is not None:
        metric_axes.axhline(
            info["target"], color="grey", linestyle="--", linewidth=1, label="target"
        )
    metric_axes.set(xlabel="epoch", ylabel=f"test {metric}", title=f"test {metric}")
    loss_axes.set(xlabel="epoch", ylabel="train loss", title="train loss (mean over steps)")
    if positive_losses:
        loss_axes.set_yscale("log")
    for axes in (metric_axes, loss_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(f"{task}: mean over seeds (line) and min–max over seeds (band)")
    longest = max((len(row.get("short_label", row["label"])) for row in rows), default=10)
    # Columns that fit the 12-inch width at small font (about 0.075 in per character + handle).
    ncols = max(1, min(len(rows) + 1, int(11.0 / (0.075 * longest + 0.6))))
    figure.legend(loc="outside lower center", ncols=ncols, fontsize="small")
    _save_figure(figure, path)


def _plot_final(task: str, info: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [row for row in info["rows"] if row["final_test_metric"]["n"]]
    figure = Figure(figsize=(8, 2.0 + 0.45 * max(len(rows), 1)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    # Best row at the top.
    for position, (row, colour) in enumerate(
        zip(reversed(rows), reversed(_colours(len(rows))), strict=True)
    ):
        stat = row["final_test_metric"]
        values = np.asarray(stat["values"], dtype=float)
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
        axes.scatter(values, position + jitter, color=colour, s=18, alpha=0.7, zorder=3)
        axes.errorbar(
            stat["mean"],
            position,
            xerr=stat["std"] or 0.0,
            fmt="D",
            color="black",
            markersize=5,
            capsize=4,
            zorder=4,
        )
    names = [row.get("short_label", row["label"]) for row in reversed(rows)]
    axes.set_yticks(range(len(rows)), names, fontsize="small")
    if info.get("target") is not None:
        axes.axvline(info["target"], color="grey", linestyle="--", linewidth=1)
    metric = info["metric_name"]
    better = "higher" if info["higher_is_better"] else "lower"
    axes.set(xlabel=f"final test {metric} ({better} is better)")
    figure.suptitle(f"{task}: final test {metric}\n(dots: seeds; diamond: mean ± std)")
    axes.grid(alpha=0.3, axis="x")
    _save_figure(figure, path)


def _save_figure(figure: Any, path: Path) -> None:
    _write_atomic(path, lambda handle: figure.savefig(handle, dpi=110, format="png"), binary=True)


def _write_atomic(path: Path, write: Callable[[Any], None], *, binary: bool = False) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: all or nothing."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, renamed or removed
        mode="wb" if binary else "w",
        dir=path.parent,
        prefix=f".{path.name}.",
        suffix=".tmp",
        delete=False,
        **({} if binary else {"encoding": "utf-8"}),
    )
    try:
        with handle:
            write(handle)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


# -- the report -------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _environment(runs: Sequence[Mapping[str, Any]]) -> str:
    torch_versions = sorted({run["torch_version"] for run in runs})
    platforms = sorted({run["platform"] for run in runs})
    return f"torch {', '.join(torch_versions)}; {' | '.join(platforms)}"


def build_report(
    store: Store | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    tasks: Iterable[str] | None = None,
    title: str = "torchvalley benchmark",
) -> Report:
    """Write ``report.md``, ``report.json`` and per-task PNG plots into ``out_dir``.

    Args:
        store: a :class:`Store` or the path of one (it may be written to meanwhile).
        out_dir: folder for the files (created if missing).
        tasks: only these tasks (default: every task in the store).
        title: the report's heading.

    Raises:
        FileNotFoundError: if ``store`` is a path and there is no file there.

    Returns:
        The :class:`Report`. Plots are ``<task>_curves.png`` (test metric and train loss per
        epoch: mean over seeds with a min–max band) and ``<task>_final.png`` (final test
        metric per seed, and mean ± std per method).
    """
    if not isinstance(store, Store):
        with _open_existing(store) as opened:
            return build_report(opened, out_dir, tasks=tasks, title=title)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(store, tasks=tasks)
    all_runs = [run for run in store.runs() if run["task"] in summary]
    messages: list[str] = []
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        plots = False
        messages.append(
            "plots skipped: matplotlib is not installed (pip install 'torchvalley[plots]')"
        )
    else:
        plots = True

    statuses = {
        s: sum(run["status"] == s for run in all_runs)
        for s in ("finished", "diverged", "failed", "running")
    }
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [
        f"# {title}",
        "",
        f"Generated {generated} from `{store.path}`: {len(all_runs)} runs "
        f"({', '.join(f'{n} {s}' for s, n in statuses.items())}).",
    ]
    if all_runs:
        lines += ["", _environment(all_runs) + "."]
    lines += [
        "",
        "Cells are mean ± sample std (ddof=1) over the seeds that finished; diverged and failed "
        "runs are counted in *seeds* but not averaged. Time to target is the training time "
        "(evaluation excluded) until the first epoch whose test metric reached the target, "
        "over the seeds that reached it. Rows are sorted by final test metric, best first.",
    ]
    for message in messages:
        lines += ["", f"> {message}"]
    plot_paths: list[Path] = []
    json_tasks: dict[str, Any] = {}
    for task, info in summary.items():
        rows = info["rows"]
        curves = [_curves(store, row) for row in rows]
        direction = "higher" if info["higher_is_better"] else "lower"
        target = "none" if info["target"] is None else f"{info['target']:g}"
        configs = sorted({(row["epochs"], row["batch_size"], row["data_seed"]) for row in rows})
        lines += ["", f"## {task}", ""]
        if rows:
            setting = "; ".join(
                f"{epochs} epochs, batch size {batch}, data seed {data_seed}"
                for epochs, batch, data_seed in configs
            )
            lines += [
                f"Metric: {info['metric_name']} ({direction} is better), target {target}. "
                f"{setting}.",
                "",
            ]
        lines.append(format_table(rows))
        if rows:
            lines += ["", "Methods:", "", format_specs(rows)]
        if plots and any(curve["epoch"] for curve in curves):
            curves_path = out / f"{_safe_name(task)}_curves.png"
            final_path = out / f"{_safe_name(task)}_final.png"
            _plot_curves(task, info, curves, curves_path)
            plot_paths.append(curves_path)
            lines += ["", f"![{task}: learning curves]({curves_path.name})"]
            if any(row["final_test_metric"]["n"] for row in rows):
                _plot_final(task, info, final_path)
                plot_paths.append(final_path)
                lines += ["", f"![{task}: final test {info['metric_name']}]({final_path.name})"]
        failures = [
            (row["label"], run)
            for row in rows
            for run in row["runs"]
            if run["status"] == "failed" and run["error"]
        ]
        if failures:
            lines += ["", "Failed runs:", ""]
            for label, run in failures:
                last_line = run["error"].strip().splitlines()[-1]
                lines.append(f"- `{_escape(label)}` seed {run['seed']}: {last_line}")
        json_tasks[task] = {
            **{key: value for key, value in info.items() if key != "rows"},
            "rows": [{**row, "curves": curve} for row, curve in zip(rows, curves, strict=True)],
        }
    markdown = "\n".join(lines) + "\n"
    markdown_path = out / "report.md"
    json_path = out / "report.json"
    _write_atomic(markdown_path, lambda handle: handle.write(markdown))
    document = {
        "title": title,
        "generated_at": generated,
        "store": store.path,
        "environment": _environment(all_runs) if all_runs else None,
        "tasks": json_tasks,
    }
    text = json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n"
    _write_atomic(json_path, lambda handle: handle.write(text))
    return Report(
        markdown=markdown,
        markdown_path=markdown_path,
        json_path=json_path,
        plot_paths=plot_paths,
        summary=summary,
        messages=messages,
    )
