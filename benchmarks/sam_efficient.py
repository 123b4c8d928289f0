"""Efficient sharpness-aware variants against SGD and SAM on the label-noise tasks.

Every run trains one registered optimizer on one task for a fixed number of epochs with the
same loop: shuffled mini-batches (a per-run generator), constant learning rate, the final
epoch's clean test accuracy recorded, and the training time (optimizer steps, forward and
backward passes; evaluation excluded) measured with ``time.perf_counter``. Runs are interleaved
round-robin (for each seed, every method in turn), so a change in machine load hits all methods
alike. Each run appends one JSON line to ``--out``; a rerun skips the runs already there.

Tuning protocol (``--tune``): each method's one key hyperparameter (SGD: the learning rate; the
SAM family: the radius; LookSAM: alpha; MESA: lam) over a small grid, trained with tuning seed
1000 on 80% of the (noisy) training set, scored on the other 20% (noisy labels too: nothing
clean is used for tuning); the best value is used for the evaluation seeds 0..4 on the full
training set. Every method gets the same number of tuning runs.

Usage::

    python benchmarks/sam_efficient.py --task mnist1d_cnn_noise40 --epochs 30 --tune \\
        --out /tmp/sam_eff.jsonl
    python benchmarks/sam_efficient.py --report /tmp/sam_eff.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

import torchvalley
from torchvalley.bench.tasks import get_task
from torchvalley.optim.sam.esam import per_example_closure

COMMON = {"base_optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}

#: method -> (registry name, fixed hyperparameters, tuned name, grid)
METHODS: dict[str, tuple[str, dict[str, Any], str, tuple[float, ...]]] = {
    "sgd": ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}, "lr", (0.02, 0.05, 0.1)),
    "sam": ("sam", COMMON, "rho", (0.05, 0.1, 0.2)),
    "asam": ("asam", COMMON, "rho", (0.5, 1.0, 2.0)),
    "sam_on": ("sam_on", COMMON, "rho", (0.2, 0.5, 1.0)),
    "looksam": ("looksam", {**COMMON, "k": 5}, "alpha", (0.3, 0.7, 1.0)),
    "looksam_k2": ("looksam", {**COMMON, "k": 2}, "alpha", (0.3, 0.7, 1.0)),
    "esam": ("esam", {**COMMON, "beta": 0.5, "gamma": 0.5}, "rho", (0.05, 0.1, 0.2)),
    "mesa": ("mesa", {**{k: v for k, v in COMMON.items()}}, "lam", (0.4, 0.8, 1.6)),
    # SAM steps only in the first or last quarter of the run (1.25 passes per step); tunes
    # which end, and the radius (2x SAM's) of the early window. total_steps comes from the
    # run (train). A dict grid point sets several settings; "rho_times" scales SAM's rho.
    "window_sam": (
        "window_sam",
        {**COMMON, "fraction": 0.25},
        "window",
        ({"window": "early"}, {"window": "late"}, {"window": "early", "rho_times": 2}),
    ),
}
#: methods whose radius follows the tuned SAM radius (LookSAM tunes alpha at SAM's rho)
FOLLOWS_SAM_RHO = ("looksam", "looksam_k2", "window_sam")
TUNE_SEED = 1000


@dataclasses.dataclass
class Run:
    task: str
    method: str
    seed: int
    hyper: dict[str, Any]
    phase: str  # "tune" or "eval"
    accuracy: float = math.nan
    train_accuracy: float = math.nan
    train_time_s: float = math.nan
    steps: int = 0
    closure_calls: int = 0

    def key(self) -> str:
        return json.dumps(
            [self.task, self.method, self.seed, self.phase, self.hyper], sort_keys=True
        )


def _accuracy(model, inputs, targets) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        correct = (model(inputs).argmax(1) == targets).float().mean().item()
    model.train(was)
    return correct


def train(run: Run, epochs: int, holdout: bool) -> Run:
    task = get_task(run.task)
    data = task.data()
    x, y = data.train
    if holdout:  # tuning: 80% train / 20% validation of the noisy training set
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(7))
        cut = int(0.8 * x.shape[0])
        (x, y), (x_test, y_test) = (
            (x[order[:cut]], y[order[:cut]]),
            (x[order[cut:]], y[order[cut:]]),
        )
    else:
        x_test, y_test = data.test
    model = task.model(run.seed)
    name = METHODS[run.method][0]
    torch.manual_seed(run.seed)
    hyper = dict(run.hyper)
    if name == "window_sam":  # the run's step count sets where the window lies
        hyper["total_steps"] = epochs * math.ceil(x.shape[0] / task.batch_size)
    optimizer = torchvalley.create_optimizer(name, model.parameters(), model=model, **hyper)
    generator = torch.Generator().manual_seed(run.seed + 17)
    batch = task.batch_size
    calls = 0
    elapsed = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        permutation = torch.randperm(x.shape[0], generator=generator)
        for first in range(0, x.shape[0], batch):
            index = permutation[first : first + batch]
            inputs, targets = x[index], y[index]
            if name == "esam":
                inner = per_example_closure(optimizer, model, F.cross_entropy, inputs, targets)

                def closure(subset=None, backward=True, per_example=False, inner=inner):
                    nonlocal calls
                    calls += 1
                    return inner(subset=subset, backward=backward, per_example=per_example)
            else:

                def closure(inputs=inputs, targets=targets):
                    nonlocal calls
                    calls += 1
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(inputs), targets)
                    loss.backward()
                    return loss

            if torchvalley.get_optimizer_entry(name).capabilities.needs_closure:
                optimizer.step(closure)
            else:
                closure()
                optimizer.step()
            run.steps += 1
        elapsed += time.perf_counter() - start
    run.train_time_s = elapsed
    run.closure_calls = calls
    run.accuracy = _accuracy(model, x_test, y_test)
    run.train_accuracy = _accuracy(model, x, y)
    return run


def _done(out: Path) -> dict[str, dict]:
    if not out.exists():
        return {}
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {
        Run(**{k: r[k] for k in ("task", "method", "seed", "hyper", "phase")}).key(): r
        for r in rows
    }


def _run_or_load(run: Run, epochs: int, out: Path, done: dict[str, dict]) -> dict:
    key = run.key()
    if key in done:
        return done[key]
    train(run, epochs, holdout=run.phase == "tune")
    row = dataclasses.asdict(run)
    row["epochs"] = epochs
    with out.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    done[key] = row
    print(
        f"{run.phase} {run.task} {run.method} seed={run.seed} {run.hyper}: "
        f"acc {run.accuracy:.4f} train {run.train_accuracy:.3f} {run.train_time_s:.1f}s",
        flush=True,
    )
    return row


def sweep(task: str, methods: list[str], seeds: list[int], epochs: int, tune: bool, out: Path):
    done = _done(out)
    chosen: dict[str, dict[str, Any]] = {}
    for method in methods:
        _, fixed, _, _ = METHODS[method]
        chosen[method] = dict(fixed)
    if tune:
        scores: dict[str, dict[float, float]] = {m: {} for m in methods}
        order = [m for m in methods if m not in FOLLOWS_SAM_RHO] + [
            m for m in methods if m in FOLLOWS_SAM_RHO
        ]
        for method in order:
            _, fixed, knob, grid = METHODS[method]
            if method in FOLLOWS_SAM_RHO and "sam" in chosen:
                fixed = {**fixed, "rho": chosen["sam"]["rho"]}
            for index, value in enumerate(grid):
                run = Run(task, method, TUNE_SEED, _setting(fixed, knob, value), "tune")
                scores[method][index] = _run_or_load(run, epochs, out, done)["accuracy"]
            best = max(range(len(grid)), key=lambda i: (scores[method][i], -i))
            chosen[method] = _setting(fixed, knob, grid[best])
        print("chosen:", json.dumps(chosen), flush=True)
    for seed in seeds:  # round-robin: every method once per seed
        for method in methods:
            _run_or_load(Run(task, method, seed, chosen[method], "eval"), epochs, out, done)


def _setting(fixed: dict[str, Any], knob: str, value: Any) -> dict[str, Any]:
    """The hyperparameters of one grid point: ``{knob: value}``, or a dict of settings
    (``rho_times`` scales the fixed ``rho``)."""
    if not isinstance(value, dict):
        return {**fixed, knob: value}
    value = dict(value)
    times = value.pop("rho_times", None)
    setting = {**fixed, **value}
    if times is not None:
        setting["rho"] = times * fixed["rho"]
    return setting


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = []
    for task in sorted({r["task"] for r in rows}):
        evals = [r for r in rows if r["task"] == task and r["phase"] == "eval"]

        # one row per (method, setting): a method may have been run with several settings
        def label(r):
            return r["method"] + json.dumps(r["hyper"], sort_keys=True)

        methods = list(dict.fromkeys(label(r) for r in evals))
        by = {m: [r for r in evals if label(r) == m] for m in methods}
        by["sgd"] = next((by[m] for m in methods if m.startswith("sgd{")), [])
        by["sam"] = next((by[m] for m in methods if m.startswith("sam{")), [])
        if not by["sgd"]:
            continue
        sgd_time = statistics.mean(r["train_time_s"] for r in by["sgd"])
        sgd_steps = statistics.mean(r["steps"] for r in by["sgd"])
        lines += [
            f"### {task} ({evals[0]['epochs']} epochs, seeds {sorted({r['seed'] for r in evals})})",
            "",
            "| method | setting | test acc (mean ± std) | train acc | Δ vs SGD (pt) "
            "| Welch p vs SGD | Δ vs SAM (pt) | Welch p vs SAM | passes/step "
            "| train time vs SGD |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key in methods:
            method = by[key][0]["method"]
            acc = [100 * r["accuracy"] for r in by[key]]
            sgd = [100 * r["accuracy"] for r in by["sgd"]]
            sam = [100 * r["accuracy"] for r in by.get("sam", [])]
            std = statistics.stdev(acc) if len(acc) > 1 else math.nan
            hyper = by[key][0]["hyper"]
            knob = METHODS[method][2]
            setting = f"{knob}={hyper.get(knob, 'default')}"
            if method.startswith("looksam"):
                setting += f", rho={hyper.get('rho')}, k={hyper.get('k')}"
            if method == "window_sam":
                setting += f", f={hyper.get('fraction')}, rho={hyper.get('rho')}"
            p_sgd = _welch(acc, sgd)[1] if method != "sgd" and len(acc) > 1 else math.nan
            p_sam = _welch(acc, sam)[1] if sam and method != "sam" and len(acc) > 1 else math.nan
            passes = statistics.mean(r["closure_calls"] / r["steps"] for r in by[key])
            ratio = statistics.mean(r["train_time_s"] for r in by[key]) / sgd_time
            train_acc = statistics.mean(100 * r["train_accuracy"] for r in by[key])
            lines.append(
                f"| {method} | {setting} | {statistics.mean(acc):.2f} ± {std:.2f} | "
                f"{train_acc:.1f} | {statistics.mean(acc) - statistics.mean(sgd):+.2f} | "
                f"{p_sgd:.3g} | "
                + (
                    f"{statistics.mean(acc) - statistics.mean(sam):+.2f} | {p_sam:.3g} | "
                    if sam
                    else "— | — | "
                )
                + f"{passes:.2f} | {ratio:.2f} |"
            )
        lines.append("")
        lines.append(f"SGD: {sgd_steps:.0f} steps, {sgd_time:.1f} s of training per run (mean).")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d_cnn_noise40")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--tune", action="store_true", help="tune each method's knob first")
    parser.add_argument("--set", nargs="*", default=[], help="method.key=value overrides")
    parser.add_argument("--out", type=Path, default=Path("/tmp/sam_efficient.jsonl"))
    parser.add_argument("--report", type=Path, help="print the tables of a results file")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    torch.set_num_threads(args.threads)
    for item in args.set:
        target, value = item.split("=", 1)
        method, key = target.split(".", 1)
        name, fixed, knob, grid = METHODS[method]
        METHODS[method] = (name, {**fixed, key: json.loads(value)}, knob, grid)
    sweep(args.task, args.methods, args.seeds, args.epochs, args.tune, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
