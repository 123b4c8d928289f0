"""Directional statistics of SGD (Lee, Cho & Kang 2018): vMF concentration of minibatch gradients.

Reproduces, at small scale, the two claims of "Directional Analysis of Stochastic Gradient
Descent via von Mises-Fisher Distributions in Deep Learning" (arXiv:1810.00150):

1. the directional uniformity of minibatch gradients increases over SGD training (the fitted
   vMF concentration κ falls);
2. the gradient stochasticity correlates more strongly with the directional uniformity than with
   the gradient-norm stochasticity.

For each task, batch size and seed the task's model is trained with plain SGD (constant lr, no
momentum, no weight decay) and, at every epoch boundary (epoch 0 = initialisation), with the
weights frozen, ``--probes`` minibatches of the training batch size are drawn (each a uniform
random subset of the training set, independent across minibatches) and
:func:`torchvalley.landscape.vmf_concentration` gives, from the same per-minibatch gradients:

* ``kappa``: the maximum-likelihood vMF concentration of the directions g_i/‖g_i‖ (and R̄, the
  mean resultant length; the uniform-direction null for the same (n, d) is reported);
* ``ns``: gradient-*norm* stochasticity, the coefficient of variation std/mean of ‖g_i‖;
* ``gs``: gradient stochasticity tr Cov(g_B) = E‖g_B − ∇L‖² (unbiased estimate over the
  probes); ``gs_rel`` = tr Cov(g_B)/E‖g_B‖², its scale-free version.

Correlations across the checkpoints of one run (Spearman, and Pearson on log κ), per seed;
then mean ± std over seeds and a paired test (t and Wilcoxon over seeds, and a Wilcoxon test
pooled over every run) of |ρ(gs, κ)| against |ρ(gs, ns)|. The trend of κ is the Spearman
correlation of κ with the epoch.

Example::

    .venv/bin/python benchmarks/directional_statistics.py \\
        --out /tmp/dirstat.md --json docs/results/directional_statistics.json \\
        --figure-dir docs/figures
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import torchvalley.bench.builtin_tasks  # noqa: F401  (registers the tasks)
from _harness import machine_facts, machine_lines, write_outputs
from torchvalley.bench.machine import load_average
from torchvalley.bench.runner import global_seed, shuffle_seed
from torchvalley.bench.tasks import get_task
from torchvalley.landscape import vmf_concentration


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", nargs="+", default=["mnist1d_cnn", "digits_mlp"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--probes", type=int, default=50, help="minibatches per checkpoint")
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
    parser.add_argument("--figure-dir", type=Path, default=None)
    return parser.parse_args(argv)


def checkpoint(model, task, train, batch_size: int, probes: int, generator) -> dict[str, float]:
    """vMF / stochasticity statistics of ``probes`` fresh minibatches at the current weights."""
    x, y = train
    batches = []
    for _ in range(probes):
        index = torch.randperm(x.shape[0], generator=generator)[:batch_size]
        batches.append((x[index], y[index]))
    stats = vmf_concentration(model, task.loss_fn, batches, bn_mode="train", seed=0)
    norms = stats.gradient_norms
    second = float((norms**2).mean())
    fit = stats.overall
    with torch.no_grad():
        was = model.training
        model.eval()
        loss = float(task.loss_fn(model(x), y))
        model.train(was)
    return {
        "kappa": fit.kappa,
        "rbar": fit.rbar,
        "kappa_debiased": fit.kappa_debiased,
        "null_rbar_mean": fit.null.rbar_mean,
        "null_kappa_mean": fit.null.kappa_mean,
        "exceeds_null": bool(fit.exceeds_null),
        "ns": float(norms.std(correction=1) / norms.mean()),
        "gs": stats.gradient_variance,
        "gs_rel": stats.gradient_variance / second,
        "mean_grad_norm": stats.mean_gradient_norm,
        "train_loss": loss,
        "dim": fit.dim,
    }


def run(task_name: str, batch_size: int, seed: int, args) -> dict[str, Any]:
    task = get_task(task_name)
    data = task.data()
    model = task.model(seed)
    x, y = data.train
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    shuffle = torch.Generator().manual_seed(shuffle_seed(seed))
    probe_gen = torch.Generator().manual_seed(10_000 + seed)
    rows = []
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(global_seed(seed))
        rows.append(checkpoint(model, task, data.train, batch_size, args.probes, probe_gen))
        for _ in range(args.epochs):
            model.train()
            order = torch.randperm(x.shape[0], generator=shuffle)
            for i in range(0, x.shape[0], batch_size):
                index = order[i : i + batch_size]
                opt.zero_grad(set_to_none=True)
                task.loss_fn(model(x[index]), y[index]).backward()
                opt.step()
            rows.append(checkpoint(model, task, data.train, batch_size, args.probes, probe_gen))
        model.eval()
        with torch.no_grad():
            accuracy = task.metric_fn(model(data.test[0]), data.test[1])
    return {
        "task": task_name,
        "batch_size": batch_size,
        "seed": seed,
        "checkpoints": rows,
        "test_accuracy": accuracy,
        "seconds": time.perf_counter() - start,
    }


def correlations(rows: list[dict[str, float]]) -> dict[str, float]:
    from scipy import stats

    kappa = [r["kappa"] for r in rows]
    log_kappa = [math.log(k) for k in kappa]
    epochs = list(range(len(rows)))
    out = {
        "trend_kappa": stats.spearmanr(epochs, kappa).statistic,
        "kappa_first": kappa[0],
        "kappa_last": kappa[-1],
        "kappa_epoch1": kappa[1] if len(kappa) > 1 else math.nan,
    }
    for gs in ("gs", "gs_rel"):
        g = [r[gs] for r in rows]
        ns = [r["ns"] for r in rows]
        out[f"spearman_{gs}_kappa"] = stats.spearmanr(g, kappa).statistic
        out[f"spearman_{gs}_ns"] = stats.spearmanr(g, ns).statistic
        out[f"pearson_{gs}_logkappa"] = stats.pearsonr(g, log_kappa).statistic
        out[f"pearson_{gs}_ns"] = stats.pearsonr(g, ns).statistic
    return out


def mean_std(values: Sequence[float]) -> str:
    values = [float(v) for v in values]
    if len(values) < 2:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(paired t p-value, Wilcoxon p-value) of a vs b (two-sided)."""
    from scipy import stats

    if len(a) < 2:
        return math.nan, math.nan
    t = stats.ttest_rel(a, b).pvalue
    w = stats.wilcoxon(a, b).pvalue if any(x != y for x, y in zip(a, b, strict=True)) else 1.0
    return float(t), float(w)


def summarise(results: list[dict[str, Any]], args) -> tuple[str, dict[str, Any]]:
    from scipy import stats

    lines = ["### Per setting (mean ± std over seeds)", ""]
    lines.append(
        "| task | B | d | test acc | κ epoch 0 | κ epoch 1 | κ last | uniform-null κ "
        "| ρ(κ, epoch) | runs with κ_last < κ_0 |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    settings = sorted({(r["task"], r["batch_size"]) for r in results})
    table: dict[str, Any] = {}
    pooled: dict[str, list[float]] = {}
    for task, bs in settings:
        runs = [r for r in results if r["task"] == task and r["batch_size"] == bs]
        cors = [correlations(r["checkpoints"]) for r in runs]
        for r, c in zip(runs, cors, strict=True):
            r["correlations"] = c
        decreasing = sum(c["kappa_last"] < c["kappa_first"] for c in cors)
        lines.append(
            f"| {task} | {bs} | {runs[0]['checkpoints'][0]['dim']} "
            f"| {mean_std([r['test_accuracy'] for r in runs])} "
            f"| {mean_std([c['kappa_first'] for c in cors])} "
            f"| {mean_std([c['kappa_epoch1'] for c in cors])} "
            f"| {mean_std([c['kappa_last'] for c in cors])} "
            f"| {runs[0]['checkpoints'][0]['null_kappa_mean']:.3g} "
            f"| {mean_std([c['trend_kappa'] for c in cors])} | {decreasing}/{len(runs)} |"
        )
        table[f"{task}/B{bs}"] = cors
    lines += ["", "### Correlations across checkpoints (per run; mean ± std over seeds)", ""]
    for gs, label in (("gs", "tr Cov(g_B)"), ("gs_rel", "tr Cov(g_B)/E‖g_B‖²")):
        lines.append(f"Gradient stochasticity = {label}.")
        lines.append("")
        lines.append(
            "| task | B | Spearman ρ(GS, κ) | Spearman ρ(GS, NS) | paired p (t / Wilcoxon) "
            "of abs values | Pearson r(GS, log κ) | Pearson r(GS, NS) | p (t / Wilcoxon) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for task, bs in settings:
            cors = table[f"{task}/B{bs}"]
            sk = [abs(c[f"spearman_{gs}_kappa"]) for c in cors]
            sn = [abs(c[f"spearman_{gs}_ns"]) for c in cors]
            pk = [abs(c[f"pearson_{gs}_logkappa"]) for c in cors]
            pn = [abs(c[f"pearson_{gs}_ns"]) for c in cors]
            pooled.setdefault(f"{gs}_sk", []).extend(sk)
            pooled.setdefault(f"{gs}_sn", []).extend(sn)
            pooled.setdefault(f"{gs}_pk", []).extend(pk)
            pooled.setdefault(f"{gs}_pn", []).extend(pn)
            ps = paired(sk, sn)
            pp = paired(pk, pn)
            lines.append(
                f"| {task} | {bs} | {mean_std([c[f'spearman_{gs}_kappa'] for c in cors])} "
                f"| {mean_std([c[f'spearman_{gs}_ns'] for c in cors])} "
                f"| {ps[0]:.2g} / {ps[1]:.2g} "
                f"| {mean_std([c[f'pearson_{gs}_logkappa'] for c in cors])} "
                f"| {mean_std([c[f'pearson_{gs}_ns'] for c in cors])} "
                f"| {pp[0]:.2g} / {pp[1]:.2g} |"
            )
        sk, sn = pooled[f"{gs}_sk"], pooled[f"{gs}_sn"]
        pk, pn = pooled[f"{gs}_pk"], pooled[f"{gs}_pn"]
        wins = sum(a > b for a, b in zip(sk, sn, strict=True))
        w_s = stats.wilcoxon(sk, sn).pvalue
        w_p = stats.wilcoxon(pk, pn).pvalue
        lines += [
            "",
            f"Pooled over all {len(sk)} runs: |ρ(GS, κ)| = {mean_std(sk)} vs |ρ(GS, NS)| = "
            f"{mean_std(sn)}, |ρ(GS, κ)| larger in {wins}/{len(sk)} runs, Wilcoxon "
            f"p = {w_s:.2g} (Spearman); Pearson |r| {mean_std(pk)} vs {mean_std(pn)}, "
            f"Wilcoxon p = {w_p:.2g}.",
            "",
        ]
    return "\n".join(lines) + "\n", table


def plot(results: list[dict[str, Any]], figure_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task in sorted({r["task"] for r in results}):
        fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
        for bs, colour in zip(
            sorted({r["batch_size"] for r in results if r["task"] == task}),
            ("tab:blue", "tab:red", "tab:green", "tab:purple"),
            strict=False,
        ):
            runs = [r for r in results if r["task"] == task and r["batch_size"] == bs]
            for key, ax in zip(("kappa", "gs", "ns"), axes[:3], strict=True):
                series = torch.tensor([[c[key] for c in r["checkpoints"]] for r in runs])
                mean, std = series.mean(0), series.std(0)
                epochs = range(series.shape[1])
                ax.plot(epochs, mean, color=colour, label=f"B={bs}")
                ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2)
            null = runs[0]["checkpoints"][0]["null_kappa_mean"]
            axes[0].axhline(null, color=colour, ls=":", lw=1)
            cors = [r["correlations"] for r in runs]
            offset = -0.15 if bs == min(r["batch_size"] for r in results) else 0.15
            for j, key in enumerate(("spearman_gs_kappa", "spearman_gs_ns")):
                values = [abs(c[key]) for c in cors]
                axes[3].scatter([j + offset] * len(values), values, color=colour, s=14)
        axes[0].set(yscale="log", xlabel="epoch", title="vMF κ (dotted: uniform null)")
        axes[1].set(yscale="log", xlabel="epoch", title="GS = tr Cov(g_B)")
        axes[2].set(xlabel="epoch", title="NS = CV of ‖g_B‖")
        axes[3].set(
            xticks=[0, 1],
            xticklabels=["|ρ(GS, κ)|", "|ρ(GS, NS)|"],
            ylim=(0, 1.05),
            title="Spearman across checkpoints, per run",
        )
        axes[0].legend()
        fig.suptitle(f"{task}: SGD, directional statistics of minibatch gradients")
        fig.tight_layout()
        path = figure_dir / f"directional_statistics_{task}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = load_average()
    results = []
    parts = [json.loads(path.read_text()) for path in args.merge or []]
    for part in parts:
        results.extend(part["runs"])
    for task in args.tasks if not parts else []:
        for bs in args.batch_sizes:
            for seed in args.seeds:
                result = run(task, bs, seed, args)
                print(
                    f"{task} B={bs} seed={seed}: {result['seconds']:.1f}s, acc "
                    f"{result['test_accuracy']:.3f}, κ {result['checkpoints'][0]['kappa']:.3g}"
                    f" -> {result['checkpoints'][-1]['kappa']:.3g}",
                    file=sys.stderr,
                )
                results.append(result)
    facts = parts[0]["machine"] if parts else machine_facts(load_start)
    body, _table = summarise(results, args)
    command = "python benchmarks/directional_statistics.py " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    if parts:  # describe what the parts ran, not this command's defaults
        first = parts[0]["args"]
        args.epochs, args.lr, args.probes = first["epochs"], first["lr"], first["probes"]
        args.tasks = sorted({r["task"] for r in results})
        args.batch_sizes = sorted({r["batch_size"] for r in results})
        args.seeds = sorted({r["seed"] for r in results})
    header = [
        f"- command: `{command}`",
        *machine_lines(facts),
        *[f"- part: `{part['command']}`" for part in parts],
        f"- tasks {args.tasks}, batch sizes {args.batch_sizes}, {args.epochs} epochs of plain "
        f"SGD (lr {args.lr}), seeds {args.seeds}; {args.probes} probe minibatches per "
        "checkpoint; total time "
        f"{sum(r['seconds'] for r in results):.0f} s",
        "",
    ]
    figures = plot(results, args.figure_dir) if args.figure_dir else []
    report = "\n".join(header) + body
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": facts}
    payload["command"] = command
    payload["runs"] = results
    payload["figures"] = [str(p) for p in figures]
    write_outputs(report, payload, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
