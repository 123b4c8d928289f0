"""The quantization suite: quantized *task variants*, a sweep over them, a bits-vs-accuracy report.

Quantization is a model transform, not an optimizer, so it enters the harness as a task:
``"<task>+<method>:w<bits>a<bits>"`` (e.g. ``"mnist1d_cnn+rq:w4a4"``) is the task ``<task>``
whose model is ``quantize_model(model, bits, activation_bits=..., method=...)`` with every
layer's weights at ``bits`` (first and last included) and the input (the data) at 8 bits. Its
data, loss, metric, target, batch size and epochs are the base task's; the runner trains it like any
other task (the quantizers' ``alpha``, ``beta``, ``sigma`` are model parameters, trained by the
same optimizer spec) and evaluates it in eval mode, i.e. deterministically rounded. The
variant names resolve anywhere a task name is accepted (``get_task`` falls back to
:func:`quant_task`), so ``torchvalley report`` reads a quantization store like any other.

``torchvalley quant`` (:func:`run_quant_study`) sweeps methods x bit widths x seeds for one or
more tasks (the float model is the method ``"float"``: the base task itself), writes the runs to
the results store, and writes ``quantization.md`` / ``quantization.json`` (final test metric,
mean ± std over seeds, one row per method, one column per bit width) and
``<task>_accuracy_vs_bits.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from torchvalley.bench.names import QUANT_BITS, QUANT_METHODS
from torchvalley.bench.task import Task, get_task, register_task

__all__ = [
    "QuantStudy",
    "parse_variant",
    "quant_task",
    "run_quant_study",
    "variant_name",
]

_VARIANT = re.compile(r"^(?P<base>[^+]+)\+(?P<method>[a-z_]+):w(?P<w>\d+)a(?P<a>\d+)$")


def variant_name(task: str, method: str, weight_bits: int, activation_bits: int) -> str:
    """The task name of ``task`` quantized with ``method``; ``"float"`` gives ``task`` itself."""
    if method == "float":
        return task
    return f"{task}+{method}:w{weight_bits}a{activation_bits}"


def parse_variant(name: str) -> tuple[str, str, int, int]:
    """``(base task, method, weight bits, activation bits)`` of a variant name."""
    match = _VARIANT.match(name)
    if match is None:
        raise ValueError(
            f"unknown task {name!r}; a quantized variant is '<task>+<method>:w<bits>a<bits>', "
            "e.g. 'mnist1d_cnn+rq:w4a4'"
        )
    method = match["method"]
    if method not in QUANT_METHODS or method == "float":
        methods = ", ".join(m for m in QUANT_METHODS if m != "float")
        raise ValueError(f"unknown quantization method {method!r} in {name!r} (one of {methods})")
    return match["base"], method, int(match["w"]), int(match["a"])


def _build(base: Task, method: str, weight_bits: int, activation_bits: int) -> nn.Module:
    from torchvalley.quant import quantize_model

    # Every layer's weights at the study's bits (a 2-layer MLP would otherwise stay at 8 bits
    # under the library's first/last-layer default); the input (the data) at 8 bits.
    return quantize_model(
        base.build_model(),
        weight_bits,
        activation_bits=activation_bits,
        method=method,
        first_layer_bits=weight_bits,
        last_layer_bits=weight_bits,
        input_bits=8,
    )


def quant_task(name: str) -> Task:
    """The registered variant task ``name`` (registered on first use)."""
    from torchvalley.bench import task as task_module
    from torchvalley.quant.grid import check_bits

    if name in task_module._TASKS:
        return task_module._TASKS[name]
    base_name, method, weight_bits, activation_bits = parse_variant(name)
    check_bits(weight_bits, "weight bits")
    check_bits(activation_bits, "activation bits")
    base = get_task(base_name)
    variant = dataclasses.replace(
        base,
        name=name,
        description=f"{base.description}; quantized: {method} w{weight_bits}/a{activation_bits}",
        model_name=f"{base.model_name}, {method} w{weight_bits}a{activation_bits}",
        build_model=functools.partial(_build, base, method, weight_bits, activation_bits),
        load_data=base.data,  # the base task's cache: the data are generated once
        info={
            **base.info,
            "quantization": {
                "base": base_name,
                "method": method,
                "weight_bits": weight_bits,
                "activation_bits": activation_bits,
            },
        },
    )
    return register_task(variant)


@dataclasses.dataclass
class QuantStudy:
    """What :func:`run_quant_study` produced.

    Attributes:
        table: the markdown of ``quantization.md``.
        cells: ``{task: {method: {bits: {"mean", "std", "n", "values"}}}}`` of the final test
            metric.
        results: the runner's :class:`~torchvalley.bench.runner.RunResult` s.
        plot_paths: the accuracy-vs-bits PNGs.
    """

    table: str
    cells: dict[str, dict[str, dict[int, dict[str, Any]]]]
    results: list
    plot_paths: list[Path]


def run_quant_study(
    tasks: Sequence[str],
    spec: Any,
    seeds: Sequence[int],
    out: str | os.PathLike[str],
    *,
    store: Any,
    methods: Sequence[str] = QUANT_METHODS,
    bits: Sequence[int] = QUANT_BITS,
    epochs: int | None = None,
    progress: bool | None = None,
    num_threads: int | None = None,
    run_sweep: Callable[..., list] | None = None,
) -> QuantStudy:
    """Train every (task, method, bits, seed) with one optimizer spec and write the report.

    Args:
        tasks: base task names.
        spec: the optimizer spec (an ``OptimizerSpec`` or its text).
        seeds: model seeds.
        out: folder for ``quantization.md``, ``quantization.json`` and the plots.
        store: an open :class:`~torchvalley.bench.store.Store`.
        methods: from :data:`~torchvalley.bench.names.QUANT_METHODS` (``"float"``: no
            quantization, shown in every bits column; ``"brevitas"`` is skipped, with the
            reason in the report, where brevitas is not installed).
        bits: bit widths, the same for weights and activations.
        epochs, progress, num_threads: as in :func:`~torchvalley.bench.runner.run_sweep`.
        run_sweep: the sweep function (tests pass a recording one).
    """
    from torchvalley.bench import runner
    from torchvalley.quant.grid import check_bits

    sweep = runner.run_sweep if run_sweep is None else run_sweep
    for method in methods:
        if method not in QUANT_METHODS:
            raise ValueError(f"unknown method {method!r} (one of {', '.join(QUANT_METHODS)})")
    skipped = {}
    if "brevitas" in methods:
        from torchvalley.quant.brevitas_qat import brevitas_skip_reason

        reason = brevitas_skip_reason()
        if reason is not None:  # an optional dependency: the study runs without it, and says so
            skipped["brevitas"] = reason
            methods = [method for method in methods if method != "brevitas"]
    bits = [check_bits(int(b)) for b in bits]
    if "torchao" in methods and max(bits) > 8:
        raise ValueError("method 'torchao' supports at most 8 bits")
    names = []
    for task in tasks:
        get_task(task)
        for method in methods:
            for b in [bits[0]] if method == "float" else bits:
                name = variant_name(task, method, b, b)
                (quant_task(name) if name != task else get_task(name))
                names.append(name)
    results = sweep(
        names,
        [spec],
        list(seeds),
        epochs=epochs,
        store=store,
        progress=progress,
        num_threads=num_threads if num_threads is not None else runner.SWEEP_THREADS,
    )
    cells = _cells(store, tasks, methods, bits)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = _markdown(cells, tasks, methods, bits, spec, epochs)
    for method, reason in skipped.items():
        table += f"\nSkipped: `{method}`: {reason}.\n"
    plot_paths = _plots(cells, tasks, methods, bits, out)
    for path in plot_paths:
        table += f"\n![{path.stem}]({path.name})\n"
    (out / "quantization.md").write_text(table)
    (out / "quantization.json").write_text(
        json.dumps(
            {"tasks": cells, "spec": str(getattr(spec, "label", spec)), "skipped": skipped},
            indent=2,
        )
        + "\n"
    )
    return QuantStudy(table=table, cells=cells, results=results, plot_paths=plot_paths)


def _cells(store, tasks, methods, bits) -> dict:
    from torchvalley.bench.report import summarize

    cells: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for task in tasks:
        cells[task] = {}
        for method in methods:
            cells[task][method] = {}
            for b in bits:
                name = variant_name(task, method, b, b)
                rows = summarize(store, tasks=[name])[name]["rows"]
                stat = rows[0]["final_test_metric"] if rows else {"n": 0, "values": []}
                cells[task][method][b] = {k: stat.get(k) for k in ("mean", "std", "n", "values")}
    return cells


def _cell_text(stat: dict[str, Any]) -> str:
    if not stat.get("n"):
        return "-"
    std = stat.get("std")
    return f"{stat['mean']:.4f} ± {std:.4f}" if std is not None else f"{stat['mean']:.4f}"


def _markdown(cells, tasks, methods, bits, spec, epochs) -> str:
    lines = [
        "# Quantization: final test metric vs bits (weights/activations)",
        "",
        f"Optimizer spec `{getattr(spec, 'label', spec)}`; epochs: "
        f"{'task default' if epochs is None else epochs}. Mean ± std over seeds (n per cell in "
        "quantization.json). All layers' weights at the bits shown; the input at 8 bits.",
    ]
    for task in tasks:
        lines += ["", f"## {task}", ""]
        lines.append("| method | " + " | ".join(f"{b}/{b}" for b in bits) + " |")
        lines.append("|---|" + "---|" * len(bits))
        for method in methods:
            row = [_cell_text(cells[task][method][b]) for b in bits]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _plots(cells, tasks, methods, bits, out: Path) -> list[Path]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return []
    paths = []
    for task in tasks:
        figure = Figure(figsize=(5.5, 4))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for method in methods:
            xs, means, stds = [], [], []
            for b in bits:
                stat = cells[task][method][b]
                if stat.get("n"):
                    xs.append(b)
                    means.append(stat["mean"])
                    stds.append(stat["std"] or 0.0)
            if xs:
                axes.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method)
        axes.set_xlabel("bits (weights = activations)")
        axes.set_ylabel("final test metric")
        axes.set_xticks(sorted(bits))
        axes.set_title(task)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = out / f"{task}_accuracy_vs_bits.png"
        figure.savefig(path, dpi=110)
        paths.append(path)
    return paths
