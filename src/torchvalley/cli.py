"""The ``torchvalley`` command line: ``list``, ``bench``, ``report``, ``landscape``, ``demo``,
``quant``.

Examples::

    torchvalley list
    torchvalley bench --task mnist1d_cnn --optimizer sgd:lr=0.05,momentum=0.9 \\
        --optimizer adam:lr=1e-3 --seeds 0 1 2 --epochs 20 --store results.db --report reports/
    torchvalley report --store results.db --out reports/
    torchvalley landscape --task mnist1d_cnn -o sgd:lr=0.05,momentum=0.9 -o adam:lr=1e-3 \\
        --seeds 0 1 2 --out reports/landscape
    torchvalley demo
    torchvalley quant --task mnist1d_cnn --method float lsq rq rq_st --bits 8 4 2 --seeds 0 1

Errors end in one line starting with ``torchvalley: error:`` on stderr, never a traceback (set
``TORCHVALLEY_DEBUG=1`` for one). Exit status 2: bad input (a spec, a task, a value, a store that
is not ours, a path that cannot be written), checked before any run starts; 1: the work failed
(runs failed, the disk filled up; finished runs are kept in the store); 130: interrupted.

``--help`` builds its parser from :mod:`torchvalley.bench.names` and imports no landscape module
and no task.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from torchvalley import __version__
from torchvalley.bench.names import DEFAULT_SUITES, DEMO_SUITES, MEASURES, QUANT_BITS, QUANT_METHODS

__all__ = ["main"]


class CommandError(Exception):
    """An error reported to the user as one line, exit status 2."""


class WorkFailed(Exception):
    """The command ran but its work failed (runs failed): one line, exit status 1."""


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = _whole_number(text)
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"seed {value} out of range [-2**63, 2**63)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` and prove a file can be written there, before any work starts."""
    folder = Path(path)
    if not str(path).strip():
        raise CommandError(f"empty {what} path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".torchvalley-probe-"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise CommandError(f"cannot write the {what} to {str(path)!r}: {reason}") from None
    return folder


def _open_store(path: str, *, must_exist: bool = False):
    from torchvalley.bench.store import Store, StoreError

    if must_exist and "://" not in path and not Path(path).is_file():
        raise CommandError(f"no results store at {path}")
    try:
        return Store(path)
    except StoreError as error:
        raise CommandError(str(error)) from None


def _optimizer_rows() -> list[dict]:
    from torchvalley.registry import optimizer_entries

    rows = []
    for entry in optimizer_entries():
        capabilities = entry.capabilities
        rows.append(
            {
                "name": entry.name,
                "family": entry.family,
                "capabilities": capabilities.flags(),
                "passes_per_step": capabilities.passes_per_step,
                "needs_closure": capabilities.needs_closure,
                "noisy": capabilities.noisy,
                "manifold_aware": capabilities.manifold_aware,
                "second_order": capabilities.second_order,
                "wraps_base": capabilities.wraps_base,
                "hyperparameters": {h.name: repr(h.default) for h in entry.hyperparameters},
                "summary": entry.summary,
                "paper": entry.paper,
            }
        )
    return rows


def _task_rows() -> list[dict]:
    from torchvalley.bench.tasks import task_entries

    return [
        {
            "name": task.name,
            "model": task.model_name,
            "metric": task.metric_name,
            "target": task.target,
            "batch_size": task.batch_size,
            "default_epochs": task.default_epochs,
            "description": task.description,
        }
        for task in task_entries()
    ]


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _command_list(args: argparse.Namespace) -> int:
    rows = _task_rows() if args.tasks else _optimizer_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.tasks:
        print(
            _markdown(
                ["task", "model", "metric", "target", "batch", "epochs", "description"],
                [
                    [
                        r["name"],
                        r["model"],
                        r["metric"],
                        r["target"],
                        r["batch_size"],
                        r["default_epochs"],
                        r["description"],
                    ]
                    for r in rows
                ],
            )
        )
    else:
        print(
            _markdown(
                [
                    "optimizer",
                    "family",
                    "capabilities",
                    "passes/step",
                    "hyperparameters",
                    "summary",
                ],
                [
                    [
                        r["name"],
                        r["family"],
                        ", ".join(r["capabilities"]) or "-",
                        r["passes_per_step"],
                        ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items()),
                        r["summary"],
                    ]
                    for r in rows
                ],
            )
        )
    return 0


def _parse_specs(texts: Sequence[str]) -> list:
    from torchvalley.bench.specs import OptimizerSpec

    specs = []
    for text in texts:
        try:
            specs.append(OptimizerSpec.parse(text))
        except ValueError as error:
            raise CommandError(f"optimizer spec {text!r}: {error}") from None
    return specs


def _check_tasks(names: Sequence[str]) -> list[str]:
    from torchvalley.bench.tasks import get_task

    for name in names:
        try:
            get_task(name)
        except ValueError as error:
            raise CommandError(str(error)) from None
    return list(names)


def _write_report(store, out: Path, tasks: Sequence[str] | None, title: str) -> None:
    from torchvalley.bench.report import build_report

    if tasks:
        stored = {run["task"] for run in store.runs()}
        missing = [task for task in tasks if task not in stored]
        if missing:
            known = ", ".join(sorted(stored)) or "none"
            raise CommandError(
                f"no runs of task {', '.join(map(repr, missing))} in {store.path}; "
                f"tasks with runs: {known}"
            )
    report = build_report(store, out, tasks=tasks, title=title)
    print(report.markdown)
    print(f"\nreport written to {out}/ (markdown, JSON and plots)", file=sys.stderr)


def _report_failures(results: Sequence, store_path: str) -> None:
    failed = [result for result in results if result.status == "failed"]
    if failed:
        last = (failed[0].error or "").strip().splitlines() or ["unknown error"]
        raise WorkFailed(
            f"{len(failed)} of {len(results)} runs failed (kept as 'failed' in {store_path}, "
            f"redone by the next sweep); first: {failed[0].task} {failed[0].spec_label} "
            f"seed={failed[0].seed}: {last[-1]}"
        )


def _sweep(args: argparse.Namespace, tasks: list[str], specs: list, title: str) -> int:
    from torchvalley.bench.runner import SWEEP_THREADS, run_sweep

    report = None if args.report is None else _writable_folder(args.report, "report")
    started = time.perf_counter()
    with _open_store(args.store) as store:
        if getattr(args, "workers", 1) > 1 or getattr(args, "ray", None):
            from torchvalley.bench.parallel import run_parallel  # workers open the store

            results = run_parallel(
                tasks,
                specs,
                args.seeds,
                store=args.store,
                workers=args.workers,
                ray=args.ray,
                epochs=args.epochs,
                data_seed=args.data_seed,
                batch_size=args.batch_size,
                progress=False if args.no_progress else None,
                num_threads=args.threads or SWEEP_THREADS,
            )
        else:
            results = run_sweep(
                tasks,
                specs,
                args.seeds,
                epochs=args.epochs,
                data_seed=args.data_seed,
                batch_size=args.batch_size,
                store=store,
                progress=False if args.no_progress else None,  # None: bars on a terminal only
                num_threads=args.threads or SWEEP_THREADS,
            )
        print(
            f"sweep finished in {time.perf_counter() - started:.1f} s; store: {args.store}",
            file=sys.stderr,
        )
        if report is not None:
            _write_report(store, report, tasks, title)
    _report_failures(results, args.store)
    return 0


def _command_bench(args: argparse.Namespace) -> int:
    tasks = _check_tasks(args.task)
    if any(text.startswith("tuned:") for text in args.optimizer):
        return _tuned_bench(args, tasks)
    specs = _parse_specs(args.optimizer)
    return _sweep(args, tasks, specs, title="torchvalley benchmark")


def _tuned_bench(args: argparse.Namespace, tasks: list[str]) -> int:
    """``-o tuned:<spec>``: each task runs the configuration `torchvalley tune` chose there."""
    from torchvalley.bench.tune import resolve_tuned

    report, args.report = args.report, None
    for task in tasks:
        with _open_store(args.store) as store:
            try:
                specs = [resolve_tuned(text, task, store) for text in args.optimizer]
            except ValueError as error:
                raise CommandError(str(error)) from None
        _sweep(args, [task], specs, title="torchvalley benchmark (tuned)")
    if report is not None:
        with _open_store(args.store) as store:
            _write_report(store, _writable_folder(report, "report"), tasks, "torchvalley (tuned)")
    return 0


def _command_tune(args: argparse.Namespace) -> int:
    from torchvalley.bench.tune import tune, tuning_report

    tasks = _check_tasks(args.task)
    specs = _parse_specs(args.optimizer)
    report = None if args.report is None else _writable_folder(args.report, "report")
    _open_store(args.store).close()
    results = []
    for task in tasks:
        for spec in specs:
            result = tune(
                task,
                spec,
                store=args.store,
                budget=args.budget,
                seeds=args.seeds,
                epochs=args.epochs,
                space=args.space or (),
                trial_seed=args.trial_seed,
                sampler=args.sampler,
                pruner=args.pruner,
                objective=args.objective,
                storage=args.storage,
                workers=args.workers,
                ray=args.ray,
                num_threads=args.threads or 1,
                progress=False if args.no_progress else None,
            )
            results.extend(result.results)
            print(
                f"{task} {spec.label}: {result.budget} trials ({result.n_complete} complete, "
                f"{result.n_pruned} pruned, {result.n_failed} failed); tuned: "
                f"{result.tuned_spec or 'none (no trial completed)'}",
                file=sys.stderr,
            )
    with _open_store(args.store) as store:
        markdown = tuning_report(store, report) if report is not None else None
    if markdown is not None:
        print(markdown)
        print(f"\ntuning report written to {report}/", file=sys.stderr)
    _report_failures(results, args.store)
    return 0


def _command_report(args: argparse.Namespace) -> int:
    out = _writable_folder(args.out, "report")
    with _open_store(args.store, must_exist=True) as store:
        _write_report(store, out, args.task or None, args.title)
    return 0


def _command_demo(args: argparse.Namespace) -> int:
    from torchvalley.bench import demo
    from torchvalley.bench.runner import SWEEP_THREADS, run_sweep

    names = list(dict.fromkeys(args.suite or demo.DEFAULT_SUITES))
    try:
        suites = [(demo.get_suite(name), demo.demo_specs(name)) for name in names]
    except ValueError as error:
        raise CommandError(str(error)) from None
    out = _writable_folder(args.out, "demo output")
    store_path = out / "demo.db"
    if args.fresh and store_path.exists():
        store_path.unlink()
    started = time.perf_counter()
    results = []
    with _open_store(str(store_path)) as store:
        for suite, specs in suites:
            results += run_sweep(
                [suite.task],
                specs,
                args.seeds or list(suite.seeds),
                epochs=suite.epochs if args.epochs is None else args.epochs,
                store=store,
                progress=False if args.no_progress else None,  # None: bars on a terminal only
                num_threads=args.threads or SWEEP_THREADS,
            )
        print(
            f"demo finished in {time.perf_counter() - started:.1f} s; store: {store_path}",
            file=sys.stderr,
        )
        title = "torchvalley demo: " + "; ".join(suite.title for suite, _ in suites)
        _write_report(store, out, [suite.task for suite, _ in suites], title)
    _report_failures(results, str(store_path))
    return 0


def _check_checkpoint(path: str, task_name: str) -> None:
    """A ``--checkpoint`` must be a ``torch.save``'d state_dict that fits the task's model."""
    import torch

    from torchvalley.bench.tasks import get_task

    if not Path(path).is_file():
        raise CommandError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CommandError(
            f"checkpoint {path} is not a state_dict saved with torch.save ({reason[:200]})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CommandError(
            f"checkpoint {path} holds a {type(state).__name__}, not a state_dict "
            "(save model.state_dict())"
        )
    model = get_task(task_name).model(0)
    missing, unexpected = (
        model.state_dict().keys() - state.keys(),
        state.keys() - model.state_dict().keys(),
    )
    if missing or unexpected:
        raise CommandError(
            f"checkpoint {path} does not fit task {task_name!r}'s model: "
            f"{len(missing)} missing keys (e.g. {sorted(missing)[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise CommandError(
            f"checkpoint {path} does not fit task {task_name!r}'s model: {detail}"
        ) from None


def _command_landscape(args: argparse.Namespace) -> int:
    from torchvalley.bench.landscape_study import run_landscape_study

    if args.checkpoint is None and not args.optimizer:
        raise CommandError("give --optimizer specs to train with, or a --checkpoint to measure")
    tasks = _check_tasks([args.task])
    if args.checkpoint is not None:
        _check_checkpoint(args.checkpoint, tasks[0])
    specs = _parse_specs(args.optimizer or [])
    _writable_folder(args.out, "landscape study")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    study = run_landscape_study(
        tasks[0],
        specs,
        args.seeds,
        args.out,
        epochs=args.epochs,
        checkpoint=args.checkpoint,
        measures=args.measure,
        examples=args.examples,
        rho=args.rho,
        progress=False if args.no_progress else None,
    )
    print(study.table)
    print(
        f"\nlandscape study written to {args.out}/ (landscape.md, landscape.json, plots)",
        file=sys.stderr,
    )
    return 0


def _command_quant(args: argparse.Namespace) -> int:
    from torchvalley.bench.quant_study import run_quant_study

    tasks = _check_tasks(args.task)
    specs = _parse_specs([args.optimizer])
    out = _writable_folder(args.out, "quantization report")
    started = time.perf_counter()
    with _open_store(args.store) as store:
        study = run_quant_study(
            tasks,
            specs[0],
            args.seeds,
            out,
            store=store,
            methods=list(dict.fromkeys(args.method)),
            bits=list(dict.fromkeys(args.bits)),
            epochs=args.epochs,
            progress=False if args.no_progress else None,
            num_threads=args.threads,
        )
    print(study.table)
    print(
        f"quantization study finished in {time.perf_counter() - started:.1f} s; store: "
        f"{args.store}; report written to {out}/ (quantization.md, .json, plots)",
        file=sys.stderr,
    )
    _report_failures(study.results, args.store)
    return 0


def _command_uq(args: argparse.Namespace) -> int:
    import statistics

    from torchvalley.bench import uq

    out = _writable_folder(args.out, "UQ report")
    seeds = list(range(args.seeds))
    methods = list(dict.fromkeys(args.method))
    log = (lambda _: None) if args.no_progress else (lambda line: print(line, file=sys.stderr))
    for task in dict.fromkeys(args.task):
        results = uq.run_benchmark([task], methods, seeds, scale=args.scale, log=log)[task]
        (Path(out) / f"{task}.json").write_text(json.dumps({"results": results}, indent=1))
        keys = list(next(iter(results.values()))["runs"][0])
        print(f"{task}\n| method | config | " + " | ".join(keys) + " |")
        for method, entry in results.items():
            cells = []
            for key in keys:
                values = [run[key] for run in entry["runs"]]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
            config = ", ".join(f"{k}={v:g}" for k, v in (entry["config"] or {}).items())
            print(f"| {method} | {config} | " + " | ".join(cells) + " |")
    print(f"UQ results written to {out}/ (<task>.json)", file=sys.stderr)
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchvalley",
        description="Optimizers, samplers and loss-landscape diagnostics: list, bench, report.",
    )
    parser.add_argument("--version", action="version", version=f"torchvalley {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="registered optimizers (or tasks) and capabilities")
    listing.add_argument("--tasks", action="store_true", help="list benchmark tasks instead")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_command_list)

    def add_run_options(sub: argparse.ArgumentParser, seeds_default: list[int] | None) -> None:
        sub.add_argument(
            "--seeds",
            type=_seed,
            nargs="+",
            default=seeds_default,
            help="model-init / data-order seeds",
        )
        sub.add_argument(
            "--epochs",
            type=_positive_int,
            default=None,
            help="epochs per run (default: the task's)",
        )
        sub.add_argument(
            "--threads",
            type=_positive_int,
            default=None,
            help="torch CPU threads per run (default: 1 in sweeps, fastest on a shared CPU)",
        )
        sub.add_argument(
            "--no-progress",
            action="store_true",
            help="no progress bars (on a terminal) or lines (in a log)",
        )

    bench = commands.add_parser("bench", help="run tasks x optimizer specs x seeds into a store")
    bench.add_argument(
        "--task",
        action="append",
        required=True,
        help="task name (repeatable); see `torchvalley list --tasks`",
    )
    bench.add_argument(
        "--optimizer",
        "-o",
        action="append",
        required=True,
        help="spec like 'sam:base_optimizer=sgd,lr=0.1,rho=0.05' (repeatable)",
    )
    add_run_options(bench, [0])
    bench.add_argument(
        "--data-seed", type=int, default=None, help="data-generation seed (default: the task's)"
    )
    bench.add_argument(
        "--batch-size", type=_positive_int, default=None, help="batch size (default: the task's)"
    )
    bench.add_argument(
        "--store",
        default="results/torchvalley.db",
        help="results store: an SQLite file or a database URL (postgresql://user@host/db); "
        "finished runs in it are skipped",
    )
    bench.add_argument("--report", default=None, help="also write a report to this folder")
    bench.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="local worker processes, one run each (default 1: serial); with --ray local, its CPUs",
    )
    bench.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: 'local' (a private instance), 'auto' or a cluster address; give "
        "--store a database URL (postgresql://...) that every node reaches",
    )
    bench.set_defaults(handler=_command_bench)

    report = commands.add_parser("report", help="tables, plots and JSON from a store")
    report.add_argument("--store", required=True, help="sqlite results store")
    report.add_argument("--out", required=True, help="output folder")
    report.add_argument("--task", action="append", help="only these tasks (repeatable)")
    report.add_argument("--title", default="torchvalley benchmark")
    report.set_defaults(handler=_command_report)

    tuning = commands.add_parser(
        "tune",
        help="fair tuning (Optuna): equal trial budget, validation split, test re-runs over seeds",
    )
    tuning.add_argument("--task", action="append", required=True, help="task name (repeatable)")
    tuning.add_argument(
        "--optimizer",
        "-o",
        action="append",
        required=True,
        help="method with what stays fixed, e.g. 'sam:base_optimizer=sgd,momentum=0.9'",
    )
    add_run_options(tuning, [0, 1, 2])
    tuning.add_argument("--budget", type=_positive_int, default=20, help="trials per method")
    tuning.add_argument(
        "--space",
        action="append",
        help="search dimension: name=log:low:high | uniform:low:high | int:low:high | "
        "choice:a|b; 'name' alone derives the range; '-name' leaves it out (repeatable)",
    )
    tuning.add_argument("--trial-seed", type=_seed, default=0, help="model seed of every trial")
    tuning.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    tuning.add_argument("--pruner", choices=("median", "none"), default="median")
    tuning.add_argument(
        "--objective",
        choices=("loss", "metric"),
        default="loss",
        help="what the trials are selected on, on the validation split",
    )
    tuning.add_argument(
        "--store",
        default="results/torchvalley.db",
        help="results store: an SQLite file or a database URL (postgresql://...)",
    )
    tuning.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: <store>.optuna.db beside a file store; the same "
        "database for a URL store)",
    )
    tuning.add_argument("--workers", type=_positive_int, default=1, help="local processes")
    tuning.add_argument("--ray", default=None, metavar="ADDRESS", help="'local', 'auto' or address")
    tuning.add_argument("--report", default=None, help="write the tuning report to this folder")
    tuning.set_defaults(handler=_command_tune)

    landscape = commands.add_parser(
        "landscape", help="Hessian spectrum, sharpness and interpolation of trained models"
    )
    landscape.add_argument("--task", required=True, help="task name")
    landscape.add_argument(
        "--optimizer",
        "-o",
        action="append",
        help="spec to train with (repeatable); or use --checkpoint",
    )
    landscape.add_argument(
        "--checkpoint",
        default=None,
        help="a torch.save'd state_dict of the task's model to measure",
    )
    add_run_options(landscape, [0])
    landscape.add_argument(
        "--measure",
        nargs="+",
        choices=MEASURES,
        default=list(MEASURES),
        help="what to measure (default: all)",
    )
    landscape.add_argument(
        "--examples",
        type=_positive_int,
        default=1000,
        help="training examples in the measurement batch",
    )
    landscape.add_argument("--rho", type=_positive_float, default=0.05, help="sharpness radius")
    landscape.add_argument("--out", default="reports/landscape", help="output folder")
    landscape.set_defaults(handler=_command_landscape)

    demo = commands.add_parser("demo", help="the demo suite (what `make demo` runs)")
    demo.add_argument("--out", default="reports/demo", help="output folder (store + report)")
    demo.add_argument("--fresh", action="store_true", help="discard earlier demo runs")
    demo.add_argument(
        "--suite",
        action="append",
        choices=DEMO_SUITES,
        help=f"run only this suite (repeatable; default: {' and '.join(DEFAULT_SUITES)})",
    )
    add_run_options(demo, None)
    demo.set_defaults(handler=_command_demo)

    quant = commands.add_parser(
        "quant",
        help="quantization suite: methods x bits x seeds, accuracy-vs-bits table and plot",
    )
    quant.add_argument("--task", action="append", required=True, help="base task name (repeatable)")
    quant.add_argument(
        "--method",
        nargs="+",
        choices=QUANT_METHODS,
        default=list(QUANT_METHODS),
        help="quantization methods ('float': the unquantized model; default: all)",
    )
    quant.add_argument(
        "--bits",
        type=_positive_int,
        nargs="+",
        default=list(QUANT_BITS),
        help="bit widths, weights = activations (default: 8 4 3 2)",
    )
    quant.add_argument(
        "--optimizer", "-o", default="adam:lr=0.001", help="optimizer spec for every run"
    )
    add_run_options(quant, [0])
    quant.add_argument("--store", default="results/quantization.db", help="sqlite results store")
    quant.add_argument("--out", default="reports/quantization", help="report folder")
    quant.set_defaults(handler=_command_quant)

    from torchvalley.bench.uq import METHODS as UQ_METHODS
    from torchvalley.bench.uq import TASKS as UQ_TASKS

    uq_parser = commands.add_parser(
        "uq",
        help="uncertainty-quantification benchmark: MAP, ensembles, MC dropout, Laplace, "
        "SG-MCMC and DiMS, tuned on validation, NLL/accuracy/ECE/Brier/OOD AUROC over seeds",
    )
    uq_parser.add_argument(
        "--task", action="append", choices=UQ_TASKS, required=True, help="task (repeatable)"
    )
    uq_parser.add_argument(
        "--method", nargs="+", choices=UQ_METHODS, default=list(UQ_METHODS), help="methods"
    )
    uq_parser.add_argument("--seeds", type=_positive_int, default=5, help="seeds 0..n-1")
    uq_parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies epochs and chain lengths"
    )
    uq_parser.add_argument("--out", default="reports/uq", help="report folder")
    uq_parser.add_argument("--no-progress", action="store_true", help="no per-run log lines")
    uq_parser.set_defaults(handler=_command_uq)
    return parser


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 the work failed, 2 bad input, 130 ^C)."""
    from torchvalley.bench.store import StoreError

    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("torchvalley: interrupted; finished runs are kept in the store", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("TORCHVALLEY_DEBUG"):
            traceback.print_exc()
        if isinstance(error, CommandError | ValueError | ImportError):
            status, prefix = 2, ""
        elif isinstance(error, WorkFailed | StoreError | OSError | sqlite3.Error):
            status, prefix = 1, ""
        else:  # a bug of ours: still one line, with a way to see more
            status = 1
            prefix = f"internal error ({type(error).__name__}; TORCHVALLEY_DEBUG=1 shows it): "
        print(f"torchvalley: error: {prefix}{_one_line(error)}", file=sys.stderr)
        return status
