"""The Hessian's magnitude from SGD's fluctuations (Yaida 2019, the second use of the FDRs).

Yaida ("Fluctuation-dissipation relations for stochastic gradient descent", ICLR 2019) derives,
at stationarity of SGD with momentum (torch's buffer b, coefficient c = (η/2)(1+μ)/(1−δ)),

* FDR1 (exact):      ⟨θ·∇F⟩   = c ⟨‖b‖²⟩,
* FDR2 (harmonic):   ⟨‖∇F‖²⟩  = c ⟨bᵀ H b⟩ + O(η ∇³F),

so that the curvature along the SGD velocity, h_v = ⟨bᵀHb⟩/⟨‖b‖²⟩, is estimated from gradients
only by ⟨‖∇F‖²⟩/⟨θ·∇F⟩ ("fluctuation", FDR2 ÷ FDR1) or ⟨‖∇F‖²⟩/(c⟨‖b‖²⟩) ("kinetic"); the
deviation of the FDR2 ratio from 1 is the anharmonicity. F = L + (λ/2)‖θ‖² is the training loss
with the weight-decay term; H = ∇²L + λI.

For each task, optimizer setting and seed: train the task's model with
``torch.optim.SGD(lr, momentum, weight_decay)`` for ``--burn-in`` epochs (constant lr), then
for ``--sample`` more epochs record every ``--every`` steps, with
:meth:`torchvalley.landscape.FDRMonitor.observe_fdr2` on the whole training set, ‖∇F‖², θ·∇F,
c‖b‖² and (one Hessian-vector product) c bᵀHb; FDR1 on every step (the stationarity check).
At the final weights: Lanczos λ_max(H) (:func:`torchvalley.landscape.hessian_eigenvalues`),
Hutchinson tr(H)/P (:func:`torchvalley.landscape.hessian_trace`) and, from the same kind of
Rademacher probes, tr(H²)/tr(H) (what h_v would be if the velocity covariance were ∝ H, as for
a gradient-noise covariance equal to the Hessian).

With ``--sweep-lrs`` (plain SGD on the first task; the burn-in scaled by 0.2/η ≥ 1 so that
the slowest, weight-decay-limited mode relaxes alike) the paper's Fig. 3 check: the stationary
⟨‖∇F‖²⟩ against η, and ⟨‖∇F‖²⟩/η (constant when the landscape is harmonic on the scale
explored).

Example::

    .venv/bin/python benchmarks/fdr_hessian.py --out /tmp/fdr_hessian.md \\
        --json docs/results/fdr_hessian.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import torchvalley.bench.builtin_tasks  # noqa: F401  (registers the tasks)
from _harness import machine_facts, machine_lines, write_outputs
from torchvalley.bench.machine import load_average
from torchvalley.bench.runner import global_seed, shuffle_seed
from torchvalley.bench.tasks import get_task
from torchvalley.curvature.function import ParameterFunction
from torchvalley.landscape import (
    CurvatureOperator,
    FDRMonitor,
    hessian_eigenvalues,
    hessian_trace,
)

# (name, lr, momentum, weight decay)
SETTINGS = {
    "sgd": (0.2, 0.0, 0.01),
    "momentum": (0.02, 0.9, 0.01),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", nargs="+", default=["digits_mlp", "mnist1d_mlp"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--burn-in", type=int, default=60, help="epochs before recording")
    parser.add_argument("--sample", type=int, default=40, help="epochs of recording")
    parser.add_argument("--every", type=int, default=5, help="steps between FDR2 samples")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the task's")
    parser.add_argument("--probes", type=int, default=30, help="Hutchinson probes")
    parser.add_argument("--lanczos-iter", type=int, default=40)
    parser.add_argument("--n-batches", type=int, default=10, help="batch means")
    parser.add_argument("--sweep-lrs", type=float, nargs="*", default=[0.05, 0.1, 0.2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="summarise the runs of these --json files (e.g. parts run in parallel) instead",
    )
    return parser.parse_args(argv)


def curvature_at(model, task, data, wd: float, probes: int, lanczos_iter: int, seed: int):
    """λ_max, tr(H)/P and tr(H²)/tr(H) of H = ∇²L + λI on ``data`` at the current weights."""
    op = CurvatureOperator.of(model, task.loss_fn, data, damping=wd)
    top = hessian_eigenvalues(op, k=1, max_iter=lanczos_iter, seed=seed)
    trace = hessian_trace(op, samples=probes, seed=seed)
    function = ParameterFunction(model, task.loss_fn, data)
    point = function.point()
    gen = torch.Generator().manual_seed(seed + 1)
    quad, square = [], []
    for _ in range(probes):
        z = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.dtype) for p in point]
        hz = [h + wd * zi for h, zi in zip(function.hvp(z, point), z, strict=True)]
        quad.append(float(sum(torch.sum(zi * h) for zi, h in zip(z, hz, strict=True))))
        square.append(float(sum(torch.sum(h * h) for h in hz)))
    dim = trace.dimension
    return {
        "lambda_max": float(top.eigenvalues[0]),
        "lanczos_converged": bool(top.converged[0]),
        "trace_mean": trace.estimate / dim,
        "trace_mean_se": trace.standard_error / dim,
        "tr_h2_over_tr_h": statistics.mean(square) / statistics.mean(quad),
        "dim": dim,
    }


def run(
    task_name: str,
    lr: float,
    momentum: float,
    wd: float,
    seed: int,
    args,
    curvature: bool = True,
    burn_in: int | None = None,
):
    task = get_task(task_name)
    data = task.data()
    x, y = data.train
    batch_size = args.batch_size or task.batch_size
    model = task.model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    shuffle = torch.Generator().manual_seed(shuffle_seed(seed))
    function = ParameterFunction(model, task.loss_fn, (x, y))
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(global_seed(seed))
        monitor = None
        step = 0
        burn_in = args.burn_in if burn_in is None else burn_in
        for epoch in range(burn_in + args.sample):
            if epoch == burn_in:
                monitor = FDRMonitor(opt)
            order = torch.randperm(x.shape[0], generator=shuffle)
            for i in range(0, x.shape[0] - batch_size + 1, batch_size):  # full batches only
                index = order[i : i + batch_size]
                opt.zero_grad(set_to_none=True)
                task.loss_fn(model(x[index]), y[index]).backward()
                opt.step()
                step += 1
                if monitor is not None and step % args.every == 0:
                    monitor.observe_fdr2(function)
        model.eval()
        with torch.no_grad():
            accuracy = task.metric_fn(model(data.test[0]), data.test[1])
            train_loss = float(task.loss_fn(model(x), y))
    seconds = time.perf_counter() - start
    nb = args.n_batches
    fdr1 = monitor.estimate(start=0, n_batches=nb)
    fdr2 = monitor.fdr2_estimate(n_batches=nb)
    curv = monitor.curvature_estimate(n_batches=nb)
    row: dict[str, Any] = {
        "task": task_name,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": wd,
        "batch_size": batch_size,
        "seed": seed,
        "test_accuracy": accuracy,
        "train_loss": train_loss,
        "fdr1_ratio": fdr1.ratio,
        "fdr1_ci": (fdr1.lower, fdr1.upper),
        "fdr2_ratio": fdr2.ratio,
        "fdr2_ci": (fdr2.lower, fdr2.upper),
        "grad_sq": fdr2.lhs,  # ⟨‖∇F‖²⟩
        "c_bhb": fdr2.rhs,  # c⟨bᵀHb⟩ (direct)
        "samples": fdr2.n,
        "train_seconds": seconds,
    }
    for name in ("fluctuation", "kinetic", "direct"):
        estimate = getattr(curv, name)
        row[f"h_{name}"] = estimate.ratio
        row[f"h_{name}_ci"] = (estimate.lower, estimate.upper)
    row["anharmonicity"] = curv.anharmonicity
    if curvature:
        row.update(curvature_at(model, task, (x, y), wd, args.probes, args.lanczos_iter, seed))
    return row


def mean_std(values: Sequence[float], fmt: str = ".3g") -> str:
    values = [float(v) for v in values]
    if len(values) < 2:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), '.2g')}"


def ttest_one(values: Sequence[float]) -> float:
    from scipy import stats

    return float(stats.ttest_1samp(values, 0.0).pvalue) if len(values) > 1 else math.nan


def summarise(rows: list[dict[str, Any]], sweep: list[dict[str, Any]]) -> str:
    lines = [
        "### Curvature along the SGD velocity h_v = ⟨bᵀHb⟩/⟨‖b‖²⟩ (mean ± std over seeds)",
        "",
        "| task | setting (η, μ, λ) | test acc | FDR1 ratio | h_v direct (HVP) "
        "| h_v fluctuation (FDR2/FDR1) | rel. err | h_v kinetic | rel. err "
        "| FDR2 ratio − 1 (anharm.) | t-test p (rel. err fluct. = 0) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["task"], r["lr"], r["momentum"], r["weight_decay"]) for r in rows})
    for task, lr, mu, wd in keys:
        group = [
            r
            for r in rows
            if (r["task"], r["lr"], r["momentum"], r["weight_decay"]) == (task, lr, mu, wd)
        ]
        rel_f = [r["h_fluctuation"] / r["h_direct"] - 1 for r in group]
        rel_k = [r["h_kinetic"] / r["h_direct"] - 1 for r in group]
        lines.append(
            f"| {task} | ({lr}, {mu}, {wd}) | {mean_std([r['test_accuracy'] for r in group])} "
            f"| {mean_std([r['fdr1_ratio'] for r in group])} "
            f"| {mean_std([r['h_direct'] for r in group])} "
            f"| {mean_std([r['h_fluctuation'] for r in group])} | {mean_std(rel_f, '+.3f')} "
            f"| {mean_std([r['h_kinetic'] for r in group])} | {mean_std(rel_k, '+.3f')} "
            f"| {mean_std([r['anharmonicity'] for r in group], '+.3f')} "
            f"| {ttest_one(rel_f):.2g} |"
        )
    lines += [
        "",
        "### Against the spectrum at the final weights (mean ± std over seeds)",
        "",
        "| task | setting | λ_max (Lanczos) | tr(H)/P (Hutchinson) | tr(H²)/tr(H) "
        "| h_v fluctuation | h_v / λ_max | h_v / (tr(H²)/tr(H)) | c⟨bᵀHb⟩ direct | ⟨‖∇F‖²⟩ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, lr, mu, wd in keys:
        group = [
            r
            for r in rows
            if (r["task"], r["lr"], r["momentum"], r["weight_decay"]) == (task, lr, mu, wd)
        ]
        lines.append(
            f"| {task} | ({lr}, {mu}, {wd}) | {mean_std([r['lambda_max'] for r in group])} "
            f"| {mean_std([r['trace_mean'] for r in group])} "
            f"| {mean_std([r['tr_h2_over_tr_h'] for r in group])} "
            f"| {mean_std([r['h_fluctuation'] for r in group])} "
            f"| {mean_std([r['h_fluctuation'] / r['lambda_max'] for r in group])} "
            f"| {mean_std([r['h_fluctuation'] / r['tr_h2_over_tr_h'] for r in group])} "
            f"| {mean_std([r['c_bhb'] for r in group])} "
            f"| {mean_std([r['grad_sq'] for r in group])} |"
        )
    if sweep:
        lines += [
            "",
            "### Harmonicity check: stationary ⟨‖∇F‖²⟩ against η (plain SGD)",
            "",
            "| task | η | ⟨‖∇F‖²⟩ | ⟨‖∇F‖²⟩/η | FDR2 ratio − 1 | h_v direct | FDR1 ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for task, lr in sorted({(r["task"], r["lr"]) for r in sweep}):
            group = [r for r in sweep if (r["task"], r["lr"]) == (task, lr)]
            lines.append(
                f"| {task} | {lr} | {mean_std([r['grad_sq'] for r in group])} "
                f"| {mean_std([r['grad_sq'] / lr for r in group])} "
                f"| {mean_std([r['anharmonicity'] for r in group], '+.3f')} "
                f"| {mean_std([r['h_direct'] for r in group])} "
                f"| {mean_std([r['fdr1_ratio'] for r in group])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # forward-mode AD (the Hessian-vector products) warns once when it loads its decompositions
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    load_start = load_average()
    rows, sweep = [], []
    parts = [json.loads(path.read_text()) for path in args.merge or []]
    for part in parts:
        rows.extend(part["rows"])
        sweep.extend(part["rows"] + part["sweep"])
    sweep = [r for r in sweep if r["momentum"] == 0.0 and r.get("in_sweep")]
    for task in args.tasks if not parts else []:
        for setting in args.settings:
            lr, mu, wd = SETTINGS[setting]
            for seed in args.seeds:
                row = run(task, lr, mu, wd, seed, args)
                row["setting"] = setting
                print(
                    f"{task} {setting} seed={seed}: {row['train_seconds']:.0f}s, FDR1 "
                    f"{row['fdr1_ratio']:.3f}, h direct {row['h_direct']:.4g} fluct "
                    f"{row['h_fluctuation']:.4g}, λmax {row['lambda_max']:.4g}",
                    file=sys.stderr,
                )
                rows.append(row)
    wd = SETTINGS["sgd"][2]
    for lr in args.sweep_lrs if not parts else []:
        for seed in args.seeds:
            existing = [
                r
                for r in rows
                if (r["task"], r["lr"], r["momentum"], r["seed"]) == (args.tasks[0], lr, 0.0, seed)
            ]
            # the slowest (weight-decay) mode relaxes in ~(1 - μ)/(η λ) steps: scale the burn-in
            burn = math.ceil(args.burn_in * max(1.0, SETTINGS["sgd"][0] / lr))
            row = (
                existing[0]
                if existing
                else run(args.tasks[0], lr, 0.0, wd, seed, args, False, burn)
            )
            row["in_sweep"] = True
            sweep.append(row)
            print(f"sweep η={lr} seed={seed}: ⟨‖∇F‖²⟩ {row['grad_sq']:.4g}", file=sys.stderr)
    facts = parts[0]["machine"] if parts else machine_facts(load_start)
    command = "python benchmarks/fdr_hessian.py " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    if parts:  # describe what the parts ran, not this command's defaults
        first = parts[0]["args"]
        for key in ("burn_in", "sample", "every", "n_batches", "probes", "lanczos_iter"):
            setattr(args, key, first[key])
        args.tasks = sorted({r["task"] for r in rows})
        args.settings = sorted({r["setting"] for r in rows})
        args.seeds = sorted({r["seed"] for r in rows})
    header = [
        f"- command: `{command}`",
        *machine_lines(facts),
        *[f"- part: `{part['command']}`" for part in parts],
        f"- tasks {args.tasks}; settings (η, μ, λ) "
        + ", ".join(f"{s} {SETTINGS[s]}" for s in args.settings)
        + f"; batch size: the task's; burn-in {args.burn_in} epochs, then {args.sample} epochs "
        f"with an FDR2 sample (full training set, one gradient + one HVP) every {args.every} "
        f"steps; seeds {args.seeds}; intervals: {args.n_batches} batch means; "
        f"{args.probes} Hutchinson probes, Lanczos ≤ {args.lanczos_iter} products; total "
        f"training+sampling time {sum(r['train_seconds'] for r in rows + sweep):.0f} s",
        "",
    ]
    report = "\n".join(header) + summarise(rows, sweep)
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": facts}
    payload.update(command=command, rows=rows, sweep=[r for r in sweep if r not in rows])
    write_outputs(report, payload, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
