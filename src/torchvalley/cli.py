"""The ``torchvalley`` command line: ``list``, ``bench``, ``report``, ``landscape`` and ``demo``.

Examples::

    torchvalley list
    torchvalley bench --task mnist1d_cnn --optimizer sgd:lr=0.05,momentum=0.9 \\
        --optimizer adam:lr=1e-3 --seeds 0 1 2 --epochs 20 --store results.db --report reports/
    torchvalley report --store results.db --out reports/
    torchvalley landscape --task mnist1d_cnn -o sgd:lr=0.05,momentum=0.9 -o adam:lr=1e-3 \\
        --seeds 0 1 2 --out reports/landscape
    torchvalley demo

A bad spec, an unknown optimizer or task, or an invalid value prints one line starting with
``torchvalley: error:`` and exits with status 2 (set ``TORCHVALLEY_DEBUG=1`` for a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from torchvalley import __version__

__all__ = ["main"]


class CommandError(Exception):
    """An error reported to the user as one line, exit status 2."""


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

    report = build_report(store, out, tasks=tasks, title=title)
    print(report.markdown)
    print(f"\nreport written to {out}/ (markdown, JSON and plots)", file=sys.stderr)


def _sweep(args: argparse.Namespace, tasks: list[str], specs: list, title: str) -> int:
    from torchvalley.bench.runner import run_sweep
    from torchvalley.bench.store import Store

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with Store(args.store) as store:
        run_sweep(
            tasks,
            specs,
            args.seeds,
            epochs=args.epochs,
            data_seed=args.data_seed,
            batch_size=args.batch_size,
            store=store,
            progress=False if args.no_progress else None,  # None: bars on a terminal only
        )
        print(
            f"sweep finished in {time.perf_counter() - started:.1f} s; store: {args.store}",
            file=sys.stderr,
        )
        if args.report is not None:
            _write_report(store, Path(args.report), tasks, title)
    return 0


def _command_bench(args: argparse.Namespace) -> int:
    if args.epochs is not None and args.epochs < 1:
        raise CommandError(f"--epochs must be >= 1, got {args.epochs}")
    tasks = _check_tasks(args.task)
    specs = _parse_specs(args.optimizer)
    return _sweep(args, tasks, specs, title="torchvalley benchmark")


def _command_report(args: argparse.Namespace) -> int:
    from torchvalley.bench.store import Store

    if not Path(args.store).exists():
        raise CommandError(f"no results store at {args.store}")
    with Store(args.store) as store:
        _write_report(store, Path(args.out), args.task or None, args.title)
    return 0


def _command_demo(args: argparse.Namespace) -> int:
    from torchvalley.bench import demo
    from torchvalley.bench.runner import run_sweep
    from torchvalley.bench.store import Store

    names = list(dict.fromkeys(args.suite or demo.DEFAULT_SUITES))
    try:
        suites = [(demo.get_suite(name), demo.demo_specs(name)) for name in names]
    except ValueError as error:
        raise CommandError(str(error)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "demo.db"
    if args.fresh and store_path.exists():
        store_path.unlink()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with Store(str(store_path)) as store:
        for suite, specs in suites:
            run_sweep(
                [suite.task],
                specs,
                args.seeds or list(suite.seeds),
                epochs=args.epochs or suite.epochs,
                store=store,
                progress=False if args.no_progress else None,  # None: bars on a terminal only
            )
        print(
            f"demo finished in {time.perf_counter() - started:.1f} s; store: {store_path}",
            file=sys.stderr,
        )
        title = "torchvalley demo: " + "; ".join(suite.title for suite, _ in suites)
        _write_report(store, out, [suite.task for suite, _ in suites], title)
    return 0


def _command_landscape(args: argparse.Namespace) -> int:
    from torchvalley.landscape.study import run_landscape_study

    if args.checkpoint is None and not args.optimizer:
        raise CommandError("give --optimizer specs to train with, or a --checkpoint to measure")
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        raise CommandError(f"no checkpoint at {args.checkpoint}")
    tasks = _check_tasks([args.task])
    specs = _parse_specs(args.optimizer or [])
    if args.threads is not None:
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
            type=int,
            nargs="+",
            default=seeds_default,
            help="model-init / data-order seeds",
        )
        sub.add_argument(
            "--epochs", type=int, default=None, help="epochs per run (default: the task's)"
        )
        sub.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")

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
        "--batch-size", type=int, default=None, help="batch size (default: the task's)"
    )
    bench.add_argument(
        "--store",
        default="results/torchvalley.db",
        help="sqlite results store; finished runs in it are skipped",
    )
    bench.add_argument("--report", default=None, help="also write a report to this folder")
    bench.set_defaults(handler=_command_bench)

    report = commands.add_parser("report", help="tables, plots and JSON from a store")
    report.add_argument("--store", required=True, help="sqlite results store")
    report.add_argument("--out", required=True, help="output folder")
    report.add_argument("--task", action="append", help="only these tasks (repeatable)")
    report.add_argument("--title", default="torchvalley benchmark")
    report.set_defaults(handler=_command_report)

    from torchvalley.landscape.study import MEASURES

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
        "--examples", type=int, default=1000, help="training examples in the measurement batch"
    )
    landscape.add_argument("--rho", type=float, default=0.05, help="sharpness radius")
    landscape.add_argument("--out", default="reports/landscape", help="output folder")
    landscape.set_defaults(handler=_command_landscape)

    demo = commands.add_parser("demo", help="the demo suite (what `make demo` runs)")
    demo.add_argument("--out", default="reports/demo", help="output folder (store + report)")
    demo.add_argument("--fresh", action="store_true", help="discard earlier demo runs")
    from torchvalley.bench.demo import DEFAULT_SUITES, DEMO_SUITES

    demo.add_argument(
        "--suite",
        action="append",
        choices=DEMO_SUITES,
        help=f"run only this suite (repeatable; default: {' and '.join(DEFAULT_SUITES)})",
    )
    add_run_options(demo, None)
    demo.set_defaults(handler=_command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (CommandError, ValueError) as error:
        if os.environ.get("TORCHVALLEY_DEBUG"):
            traceback.print_exc()
        print(f"torchvalley: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchvalley: interrupted; finished runs are kept in the store", file=sys.stderr)
        return 130
