"""FDR schedule vs a hand-tuned step schedule vs constant lr on MNIST-1D (several seeds).

Trains the task's model (default ``mnist1d_cnn``: the 1-D CNN with BatchNorm) with
``torch.optim.SGD(lr, momentum, weight_decay)`` under

* ``fdr-yaida``: :class:`torchvalley.landscape.FDRScheduler` with Yaida's exact quench rule
  (``|mean O_L / mean O_R - 1| < threshold`` over the second half of each ``window``, then
  ``lr *= factor``), stepped after every optimizer step;
* ``fdr-ci``: the same scheduler with ``mode="ci"`` (quench when the batch-means interval of the
  ratio contains 1 and its half-width is at most ``--max-halfwidth``);
* ``step``: :class:`torch.optim.lr_scheduler.StepLR`-like ``MultiStepLR`` (x ``--gamma`` at the
  milestone epochs), with milestones tuned on a validation split when ``--tune`` is given;
* ``constant``: no schedule;

for the same number of epochs and seeds, and writes a markdown section (exact command, machine,
settings, mean ± std of the final test accuracy and loss, quench epochs, time) to ``--out``.

How a run trains (the benchmark runner's conventions, written out here because the runner has
no scheduler hook): ``model = task.model(seed)``; the training set is reshuffled every epoch
with ``torch.randperm`` from a generator seeded with ``runner.shuffle_seed(seed)`` (the last,
smaller batch is kept); the global torch RNG is forked and seeded with
``runner.global_seed(seed)``; the test loss and metric are evaluated in ``model.eval()`` under
``torch.no_grad()`` on the whole test set after the last epoch. Times are training time only.

Tuning (``--tune``): each candidate milestone pair (fractions of the epochs) is trained on the
first 80 % of the training set with seed 100 (not one of the reported seeds) and scored by the
accuracy on the last 20 %; the best pair is then used for the reported runs on the full
training set. The test set is never used for tuning.

Example::

    .venv/bin/python benchmarks/fdr_schedule.py --tune --out /tmp/fdr_results.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import torchvalley.bench.builtin_tasks  # noqa: F401  (registers the tasks)
from torchvalley.bench.machine import cpu_model
from torchvalley.bench.runner import global_seed, shuffle_seed
from torchvalley.bench.tasks import Task, get_task
from torchvalley.landscape import FDRScheduler

SCHEDULES = ("fdr-yaida", "fdr-ci", "step", "constant")
TUNE_CANDIDATES = ((0.5, 0.75), (0.33, 0.66), (0.6, 0.85))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--task", default="mnist1d_cnn")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the task's")
    parser.add_argument("--window", type=int, default=200, help="FDR t_adaptive (steps)")
    parser.add_argument("--threshold", type=float, default=0.01, help="Yaida's X")
    parser.add_argument("--factor", type=float, default=0.1, help="lr multiplier (1 - Y)")
    parser.add_argument("--n-batches", type=int, default=10, help="batch means (fdr-ci)")
    parser.add_argument("--max-halfwidth", type=float, default=0.1, help="fdr-ci precision")
    parser.add_argument("--milestones", type=float, nargs=2, default=[0.5, 0.75])
    parser.add_argument("--gamma", type=float, default=0.1)
    parser.add_argument("--tune", action="store_true", help="tune the step milestones first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fdr_results.md"))
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def _evaluate(model: torch.nn.Module, task: Task, data: tuple[torch.Tensor, torch.Tensor]):
    model.eval()
    with torch.no_grad():
        outputs = model(data[0])
        loss = float(task.loss_fn(outputs, data[1]))
        metric = float(task.metric_fn(outputs, data[1]))
    model.train()
    return loss, metric


def train(
    task: Task,
    seed: int,
    schedule: str,
    args: argparse.Namespace,
    train_data: tuple[torch.Tensor, torch.Tensor],
    eval_data: tuple[torch.Tensor, torch.Tensor],
    milestones: Sequence[float],
) -> dict[str, Any]:
    """One run; returns the final eval loss/metric, lr trace, quench epochs and time."""
    batch_size = args.batch_size or task.batch_size
    inputs, targets = train_data
    n = inputs.shape[0]
    steps_per_epoch = -(-n // batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(global_seed(seed))
        model = task.model(seed)
        model.train()
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
        )
        fdr = None
        epoch_scheduler = None
        if schedule.startswith("fdr"):
            fdr = FDRScheduler(
                optimizer,
                window=args.window,
                threshold=args.threshold,
                factor=args.factor,
                mode="yaida" if schedule == "fdr-yaida" else "ci",
                n_batches=args.n_batches,
                max_halfwidth=args.max_halfwidth,
            )
        elif schedule == "step":
            marks = sorted({max(1, round(f * args.epochs)) for f in milestones})
            epoch_scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=marks, gamma=args.gamma
            )
        generator = torch.Generator().manual_seed(shuffle_seed(seed))
        lrs = []
        elapsed = 0.0
        for _ in range(args.epochs):
            start = time.perf_counter()
            order = torch.randperm(n, generator=generator)
            for i in range(0, n, batch_size):
                index = order[i : i + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = task.loss_fn(model(inputs[index]), targets[index])
                loss.backward()
                optimizer.step()
                if fdr is not None:
                    fdr.step()
            if epoch_scheduler is not None:
                epoch_scheduler.step()
            elapsed += time.perf_counter() - start
            lrs.append(optimizer.param_groups[0]["lr"])
        eval_loss, eval_metric = _evaluate(model, task, eval_data)
    quenches, tests = [], []
    if fdr is not None:
        quenches = [q["step"] / steps_per_epoch for q in fdr.quenches if q["group"] == 0]
        tests = [dict(t, epoch=t["step"] / steps_per_epoch) for t in fdr.history]
    return {
        "schedule": schedule,
        "seed": seed,
        "loss": eval_loss,
        "metric": eval_metric,
        "final_lr": lrs[-1] if lrs else args.lr,
        "lrs": lrs,
        "quench_epochs": quenches,
        "fdr_tests": tests,
        "train_time_s": elapsed,
        "steps": steps_per_epoch * args.epochs,
    }


def _mean_std(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads != torch.get_num_threads():
        # only when it changes: on torch 2.13 (CPU) a call to set_num_threads(n > 1), even to the
        # current value, leaves tiny-tensor loops much slower for the rest of the process
        torch.set_num_threads(args.threads)
    task = get_task(args.task)
    data = task.data()
    wall_start = time.perf_counter()

    tuning: list[dict[str, Any]] = []
    milestones = tuple(args.milestones)
    if args.tune and "step" in args.schedules:
        x, y = data.train
        cut = int(0.8 * x.shape[0])
        for candidate in TUNE_CANDIDATES:
            run = train(task, 100, "step", args, (x[:cut], y[:cut]), (x[cut:], y[cut:]), candidate)
            tuning.append({"milestones": candidate, "val_metric": run["metric"]})
            print(f"tune {candidate}: val {task.metric_name} {run['metric']:.4f}", flush=True)
        milestones = max(tuning, key=lambda r: r["val_metric"])["milestones"]

    runs: list[dict[str, Any]] = []
    for schedule in args.schedules:
        for seed in args.seeds:
            run = train(task, seed, schedule, args, data.train, data.test, milestones)
            runs.append(run)
            print(
                f"{schedule:10s} seed {seed}: test {task.metric_name} {run['metric']:.4f} "
                f"loss {run['loss']:.4f} quenches {run['quench_epochs']} "
                f"({run['train_time_s']:.1f} s)",
                flush=True,
            )
    wall = time.perf_counter() - wall_start

    batch_size = args.batch_size or task.batch_size
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fdr_schedule.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    marks = sorted({max(1, round(f * args.epochs)) for f in milestones})
    lines = [
        f"## FDR schedule vs step schedule vs constant lr ({args.task})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {cpu_model()}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, Python {platform.python_version()}; "
        f"total wall time {wall:.0f} s (machine shared with other jobs, so times are indicative).",
        "",
        f"Settings: `{args.task}` (data seed {task.default_data_seed}), SGD lr {args.lr}, "
        f"momentum {args.momentum}, weight decay {args.weight_decay}, batch {batch_size}, "
        f"{args.epochs} epochs ({-(-data.train[0].shape[0] // batch_size) * args.epochs} steps), "
        f"seeds {', '.join(map(str, args.seeds))}. FDR: window {args.window} steps, "
        f"threshold X = {args.threshold}, factor {args.factor} (Y = {1 - args.factor:g}); "
        f"fdr-ci: {args.n_batches} batch means, 95 % interval, max half-width "
        f"{args.max_halfwidth}. Step: x{args.gamma} at epochs {marks}.",
        "",
    ]
    if tuning:
        lines += [
            "Step-schedule tuning (seed 100, 3200 train / 800 validation signals from the "
            "training set; test set unused):",
            "",
            "| milestones (fraction of epochs) | validation " + task.metric_name + " |",
            "| --- | --- |",
        ]
        for row in tuning:
            lines.append(f"| {row['milestones']} | {row['val_metric']:.4f} |")
        lines += ["", f"Chosen: {milestones}.", ""]
    lines += [
        f"| schedule | test {task.metric_name} | test loss | final lr | quench epochs "
        "(per seed) | train time / run (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for schedule in args.schedules:
        rows = [r for r in runs if r["schedule"] == schedule]
        quench = "; ".join(
            "[" + ", ".join(f"{e:.1f}" for e in r["quench_epochs"]) + "]" for r in rows
        )
        final_lrs = sorted({f"{r['final_lr']:.3g}" for r in rows})
        lines.append(
            f"| {schedule} | {_mean_std([r['metric'] for r in rows])} | "
            f"{_mean_std([r['loss'] for r in rows])} | {', '.join(final_lrs)} | "
            f"{quench if schedule.startswith('fdr') else '-'} | "
            f"{statistics.mean(r['train_time_s'] for r in rows):.1f} |"
        )
    lines.append("")
    for schedule in args.schedules:
        rows = [r for r in runs if r["schedule"] == schedule and r["fdr_tests"]]
        if rows:
            lines.append(
                f"{schedule}, FDR1 tests of seed {rows[0]['seed']} (epoch: ratio "
                "[95 % batch-means interval], * = quench): "
                + "; ".join(
                    f"{t['epoch']:.0f}: {t['ratio']:.3f} [{t['lower']:.2f}, {t['upper']:.2f}]"
                    + ("*" if t["quenched"] else "")
                    for t in rows[0]["fdr_tests"]
                )
            )
            lines.append("")
    report = "\n".join(lines)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")
    if args.json is not None:
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "tuning": tuning}
        payload["runs"] = runs
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
