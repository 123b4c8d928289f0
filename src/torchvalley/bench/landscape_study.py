"""A flatness study: train (or load) a task's model per optimizer and seed, then measure its
landscape side by side — what ``torchvalley landscape`` runs.

For every (optimizer spec, seed): the model is trained by the harness's runner (or loaded from a
checkpoint of the task's model), then measured on the first ``examples`` training examples with
BatchNorm in eval mode: top Hessian eigenvalue (Lanczos), Hutchinson trace with its standard
error, worst-case and average-case ρ-sharpness, the linear path from the initialisation to the
final weights (BatchNorm statistics recomputed on the training data at each point) and its
layer-wise version, and the eigenvalue density (stochastic Lanczos quadrature). The study writes
``landscape.json`` (every number), ``landscape.md`` (mean ± std over seeds per optimizer) and
PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from torchvalley.bench.names import MEASURES
from torchvalley.bench.specs import OptimizerSpec
from torchvalley.bench.tasks import Task, get_task

__all__ = ["MEASURES", "LandscapeStudy", "run_landscape_study"]


@dataclasses.dataclass
class LandscapeStudy:
    """What :func:`run_landscape_study` produced: per-run numbers, the table and file paths."""

    runs: list[dict[str, Any]]
    table: str
    json_path: Path
    markdown_path: Path
    plot_paths: list[Path]


def _measure(
    model: torch.nn.Module,
    init_state: dict[str, torch.Tensor] | None,
    task: Task,
    measures: Sequence[str],
    examples: int,
    rho: float,
    seed: int,
) -> tuple[dict[str, float], dict[str, Any]]:
    from torchvalley.landscape import (
        CurvatureOperator,
        hessian_eigenvalues,
        hessian_trace,
        layerwise_interpolation,
        linear_interpolation,
        sharpness,
        spectral_density,
    )

    data = task.data()
    inputs, targets = data.train
    batch = (inputs[:examples], targets[:examples])
    loss_fn = task.loss_fn
    numbers: dict[str, float] = {}
    curves: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(seed)
    # one operator, so one gradient graph, for the three spectral measurements
    operator = CurvatureOperator.of(model, loss_fn, batch)
    if "eigenvalues" in measures:
        eig = hessian_eigenvalues(operator, k=1, tol=1e-4, generator=generator)
        numbers["lambda_max"] = float(eig.eigenvalues[0])
    if "trace" in measures:
        trace = hessian_trace(operator, samples=50, generator=generator)
        numbers["trace"] = trace.estimate
        numbers["trace_se"] = trace.standard_error
    if "sharpness" in measures:
        worst = sharpness(model, loss_fn, batch, rho, kind="worst", generator=generator)
        average = sharpness(model, loss_fn, batch, rho, kind="average", generator=generator)
        numbers[f"sharpness_worst_rho={rho:g}"] = worst.value
        numbers[f"sharpness_average_rho={rho:g}"] = average.value
    if init_state is not None and ("interpolation" in measures or "layerwise" in measures):
        final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bn_data = [(inputs[i : i + 500], targets[i : i + 500]) for i in range(0, len(inputs), 500)]
        if "interpolation" in measures:
            path = linear_interpolation(
                model,
                init_state,
                final_state,
                loss_fn,
                batch,
                steps=21,
                bn_data=bn_data,
                metric_fn=task.metric_fn,
            )
            curves["interpolation"] = path
            # Vlaar & Frankle: monotonicity of the path and the height of any bump.
            losses = [float(v) for v in path.losses]
            bump = max(max(losses[i:]) - losses[i] for i in range(len(losses)))
            numbers["interpolation_max_bump"] = bump
        if "layerwise" in measures:
            curves["layerwise"] = layerwise_interpolation(
                model, init_state, final_state, loss_fn, batch, steps=11, bn_data=bn_data
            )
    if "density" in measures:
        curves["density"] = spectral_density(
            operator, n_probes=1, lanczos_steps=80, generator=generator
        )
    return numbers, curves


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _mean_std(values: list[float]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "—"
    mean = statistics.fmean(finite)
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{mean:.4g} ± {std:.2g}"


def _table(runs: list[dict[str, Any]], labels: list[str], metric_name: str) -> str:
    names: list[str] = []
    for run in runs:
        names.extend(n for n in run["numbers"] if n not in names and not n.endswith("_se"))
    header = ["optimizer", "seeds", f"test {metric_name}", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        mine = [run for run in runs if run["spec"] == label]
        cells = [f"`{label}`", str(len(mine)), _mean_std([r["test_metric"] for r in mine])]
        cells += [_mean_std([r["numbers"].get(n) for r in mine]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plots(out: Path, first_curves: dict[str, dict[str, Any]], task: Task) -> list[Path]:
    from torchvalley.landscape import plot_layerwise_interpolation, plot_spectral_density

    paths: list[Path] = []
    interpolations = {
        label: curves["interpolation"]
        for label, curves in first_curves.items()
        if "interpolation" in curves
    }
    if interpolations:
        paths.append(_plot_paths(out / "interpolation.png", interpolations, task))
    for index, (label, curves) in enumerate(first_curves.items()):
        if "density" in curves:
            paths.append(
                plot_spectral_density(
                    curves["density"], out / f"density_{index}.png", title=f"{label}"
                )
            )
        if "layerwise" in curves:
            paths.append(
                plot_layerwise_interpolation(
                    curves["layerwise"], out / f"layerwise_{index}.png", title=f"{label}"
                )
            )
    return paths


def _plot_paths(path: Path, results: dict[str, Any], task: Task) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axis, metric_axis = figure.subplots(1, 2)
    for label, result in results.items():
        alphas = [float(a) for a in result.alphas]
        loss_axis.plot(alphas, [float(v) for v in result.losses], label=label)
        if result.metrics is not None:
            metric_axis.plot(alphas, [float(v) for v in result.metrics], label=label)
    loss_axis.set(
        xlabel="α (0: initialisation, 1: trained)",
        ylabel="train loss",
        yscale="log",
        title=f"{task.name}: linear path init → final",
    )
    metric_axis.set(xlabel="α", ylabel=f"train {task.metric_name}")
    loss_axis.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def run_landscape_study(
    task: str | Task,
    specs: Sequence[OptimizerSpec | str],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    checkpoint: str | Path | None = None,
    measures: Sequence[str] = MEASURES,
    examples: int = 1000,
    rho: float = 0.05,
    progress: bool | None = None,
) -> LandscapeStudy:
    """Train per spec and seed (or load ``checkpoint``), measure, and write the study.

    Args:
        task: task name or object.
        specs: optimizer specs to train with (ignored with ``checkpoint``).
        seeds: model seeds.
        out_dir: where ``landscape.json``, ``landscape.md`` and the plots go.
        epochs: training epochs (default: the task's).
        checkpoint: a ``state_dict`` of the task's model saved with ``torch.save``; measured
            instead of training (the interpolation then starts at ``task.model(seeds[0])``).
        measures: a subset of :data:`MEASURES`.
        examples: training examples in the measurement batch.
        rho: radius of the sharpness measurements.
        progress: progress bars (``None``: on a terminal only).
    """
    from torchvalley.bench.runner import run_one

    task = get_task(task) if isinstance(task, str) else task
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"Invalid measures: {unknown} (choose from {', '.join(MEASURES)})")
    if not seeds:
        raise ValueError("Invalid seeds: at least one seed")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    first_curves: dict[str, dict[str, Any]] = {}
    if checkpoint is not None:
        jobs = [("checkpoint", seeds[0])]
    else:
        parsed = [s if isinstance(s, OptimizerSpec) else OptimizerSpec.parse(s) for s in specs]
        if not parsed:
            raise ValueError("Invalid specs: give at least one optimizer spec or a checkpoint")
        jobs = [(spec, seed) for spec in parsed for seed in seeds]
    for spec, seed in jobs:
        init_model = task.model(seed)
        init_state = {k: v.detach().clone() for k, v in init_model.state_dict().items()}
        if spec == "checkpoint":
            model = init_model
            model.load_state_dict(torch.load(checkpoint, weights_only=True))
            label, test_metric = f"checkpoint {Path(checkpoint).name}", None
        else:
            result = run_one(task, spec, seed, epochs=epochs, progress=progress, keep_model=True)
            if result.status != "finished":
                runs.append(
                    {
                        "spec": spec.label,
                        "seed": seed,
                        "status": result.status,
                        "test_metric": None,
                        "numbers": {},
                    }
                )
                continue
            model, label, test_metric = result.model, spec.label, result.test_metric
        started = time.perf_counter()
        numbers, curves = _measure(model, init_state, task, measures, examples, rho, seed)
        runs.append(
            {
                "spec": label,
                "seed": seed,
                "status": "finished",
                "test_metric": test_metric,
                "numbers": numbers,
                "measure_seconds": time.perf_counter() - started,
                "interpolation": None
                if "interpolation" not in curves
                else {
                    "alphas": [float(a) for a in curves["interpolation"].alphas],
                    "losses": [float(v) for v in curves["interpolation"].losses],
                },
            }
        )
        first_curves.setdefault(label, curves)
    labels = list(dict.fromkeys(run["spec"] for run in runs))
    table = _table(runs, labels, task.metric_name)
    plot_paths = _plots(out, first_curves, task)
    json_path = out / "landscape.json"
    summary = {
        "task": task.name,
        "examples": examples,
        "rho": rho,
        "measures": list(measures),
        "runs": runs,
    }
    json_path.write_text(json.dumps(_finite(summary), indent=2, allow_nan=False))
    markdown = (
        f"# Landscape study: {task.name}\n\nMeasured on the first {examples} training examples, "
        f"BatchNorm in eval mode; mean ± std over seeds {list(seeds)}.\n\n{table}\n"
        + "".join(f"\n![{p.stem}]({p.name})\n" for p in plot_paths)
    )
    markdown_path = out / "landscape.md"
    markdown_path.write_text(markdown)
    return LandscapeStudy(runs, table, json_path, markdown_path, plot_paths)
