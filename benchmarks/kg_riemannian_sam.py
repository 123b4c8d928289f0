"""Riemannian SAM vs. Riemannian SGD / Adam on hyperbolic knowledge-graph completion.

A small offline reproduction of the comparison in Yun & Yang (Riemannian SAM, NeurIPS 2023):
on the ``kg_hierarchy`` tasks (MuRP on the Poincaré ball, or on the hyperboloid:
``kg_hierarchy_lorentz``, where Riemannian SAM is Lorentz SAM) each method is tuned with the
same Optuna budget on the valid facts (:func:`torchvalley.bench.tune.tune`: TPE, median pruning,
objective = validation filtered MRR, one model seed), then the selected configuration is trained
for every seed and scored on the test facts: filtered MRR, mean rank and Hits@1/3/10. Each SAM
variant is compared with its base optimizer by Welch's t-test on the test MRR over seeds.

Methods (``--methods``; the search space of each is its learning rate, plus ρ for SAM):

* ``rsgd``: Riemannian SGD with heavy-ball momentum 0.9 (fixed), lr log-uniform on
  ``--rsgd-lr`` (default 1e-2…1e2; its step is not normalised, so its range sits two decades
  above the adaptive one, with the same width);
* ``rsam_rsgd``: Riemannian SAM (the ``lorentz_sam`` entry, ascent ``riemannian``) over that
  RSGD, the same lr range, ρ log-uniform on 1e-3…1 (the harness default);
* ``radam``: Riemannian Adam, lr log-uniform on ``--radam-lr`` (default 1e-4…1, the harness
  default range);
* ``rsam_radam``: Riemannian SAM over that RAdam, the same lr range, ρ on 1e-3…1.

Usage::

    python benchmarks/kg_riemannian_sam.py --task kg_hierarchy --budget 8 --epochs 10 \\
        --seeds 0 1 2 3 4 --out /tmp/kg_poincare.md --json /tmp/kg_poincare.json
    python benchmarks/kg_riemannian_sam.py --smoke    # seconds: 2 trials, 1 seed, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import machine_facts, machine_lines, write_outputs
from torchvalley.bench.machine import load_average
from torchvalley.bench.runner import run_one
from torchvalley.bench.tasks import get_task
from torchvalley.bench.tasks.kg_hierarchy import ranking_metrics
from torchvalley.bench.tune import tune

#: method -> (label, spec with what is fixed, which lr range, SAM base method or None)
METHODS: dict[str, tuple[str, str, str, str | None]] = {
    "rsgd": ("RSGD (momentum 0.9)", "rsgd:momentum=0.9", "rsgd", None),
    "rsam_rsgd": ("Riemannian SAM over RSGD", "lorentz_sam:momentum=0.9", "rsgd", "rsgd"),
    "radam": ("RAdam", "radam", "radam", None),
    "rsam_radam": (
        "Riemannian SAM over RAdam",
        "lorentz_sam:base_optimizer=radam",
        "radam",
        "radam",
    ),
}
METRICS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")


def _evaluate(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    model.eval()
    with torch.no_grad():
        return ranking_metrics(model(inputs), targets)


def popularity_baseline(task_name: str) -> dict[str, float]:
    """Test metrics of ranking every tail by its frequency among the relation's training facts.

    No learning about the queried head: the score a model must beat to show it uses the
    hierarchy (the root and its children are the answers of many ``descendant_of`` queries).
    """
    task = get_task(task_name)
    train_inputs, train_targets = task.data().train
    test_inputs, test_targets = task.data().test
    n = train_targets.shape[1]
    tails = (train_targets == 1).to(torch.int8).argmax(dim=1)
    relations = int(train_inputs[:, 1].max()) + 1
    counts = torch.zeros(relations, n, dtype=torch.float64)
    counts.index_put_(
        (train_inputs[:, 1], tails), torch.ones(len(tails), dtype=torch.float64), True
    )
    return ranking_metrics(counts[test_inputs[:, 1]], test_targets)


def run_method(args: argparse.Namespace, key: str, store: str) -> dict[str, Any]:
    """Tune one method on the valid facts, then train and test it over the seeds."""
    label, spec, lr_kind, _ = METHODS[key]
    lr_range = args.rsgd_lr if lr_kind == "rsgd" else args.radam_lr
    start = time.perf_counter()
    cpu_start = time.process_time()
    tuned = tune(
        args.task,
        spec,
        store=store,
        budget=args.budget,
        epochs=args.epochs,
        space=[f"lr=log:{lr_range[0]}:{lr_range[1]}"],
        objective="metric",
        sampler_seed=args.sampler_seed,
        test=False,
        progress=False,
    )
    tune_wall, tune_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    task = get_task(args.task)
    test_inputs, test_targets = task.data().test
    runs = []
    for seed in args.seeds:
        result = run_one(
            task, tuned.tuned_spec, seed, epochs=args.test_epochs, progress=False, keep_model=True
        )
        row: dict[str, Any] = {"seed": seed, "status": result.status}
        row["train_time_s"] = result.train_time_s
        row["cpu_time_s"] = result.cpu_time_s
        if result.status == "finished" and result.model is not None:
            row.update(_evaluate(result.model, test_inputs, test_targets))
        runs.append(row)
        print(f"  {key} seed {seed}: {row}", file=sys.stderr, flush=True)
    return {
        "method": key,
        "label": label,
        "spec": spec,
        "space": {name: dim.text for name, dim in tuned.space.items()},
        "budget": tuned.budget,
        "trials": {
            "complete": tuned.n_complete,
            "pruned": tuned.n_pruned,
            "failed": tuned.n_failed,
        },
        "tuned_spec": tuned.tuned_spec,
        "best_params": tuned.best_params,
        "valid_mrr": tuned.best_value,
        "tune_wall_s": tune_wall,
        "tune_cpu_s": tune_cpu,
        "runs": runs,
    }


def _values(result: dict[str, Any], metric: str) -> list[float]:
    return [r[metric] for r in result["runs"] if metric in r and math.isfinite(r[metric])]


def _mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def welch(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """Welch's t statistic and two-sided p-value (scipy), or None with fewer than 2 each."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        return None
    test = stats.ttest_ind(a, b, equal_var=False)
    return float(test.statistic), float(test.pvalue)


def report(args: argparse.Namespace, results: list[dict[str, Any]], facts: dict) -> str:
    lines = [f"# Riemannian SAM on `{args.task}`", ""]
    lines += machine_lines(facts)
    lines += [
        f"- tuning: {args.budget} Optuna trials per method (TPE seed {args.sampler_seed}, median "
        f"pruner), {args.epochs} epochs, objective validation filtered MRR, model seed 0",
        f"- test: seeds {' '.join(map(str, args.seeds))}, {args.test_epochs} epochs, tuned "
        "settings",
        "",
        "| method | tuned | valid MRR | test MRR | MR | Hits@1 | Hits@3 | Hits@10 | "
        "train s/run | trials c/p/f |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        params = ", ".join(f"{k}={v:.3g}" for k, v in result["best_params"].items())
        valid = result["valid_mrr"]
        times = [r["train_time_s"] for r in result["runs"]]
        trials = result["trials"]
        lines.append(
            f"| {result['label']} | {params} | "
            f"{'—' if valid is None else f'{valid:.3f}'} | "
            f"{_mean_std(_values(result, 'mrr'))} | {_mean_std(_values(result, 'mr'), 1)} | "
            f"{_mean_std(_values(result, 'hits@1'))} | {_mean_std(_values(result, 'hits@3'))} | "
            f"{_mean_std(_values(result, 'hits@10'))} | {statistics.fmean(times):.1f} | "
            f"{trials['complete']}/{trials['pruned']}/{trials['failed']} |"
        )
    base = popularity_baseline(args.task)
    lines.append(
        f"| reference: per-relation tail popularity (no training) | — | — | {base['mrr']:.3f} | "
        f"{base['mr']:.1f} | {base['hits@1']:.3f} | {base['hits@3']:.3f} | "
        f"{base['hits@10']:.3f} | — | — |"
    )
    by_key = {r["method"]: r for r in results}
    lines += ["", "Welch t-tests on the test MRR over seeds (SAM vs its base):", ""]
    for key, (label, _, _, base) in METHODS.items():
        if base is None or key not in by_key or base not in by_key:
            continue
        a, b = _values(by_key[key], "mrr"), _values(by_key[base], "mrr")
        test = welch(a, b)
        if test is None:
            lines.append(f"- {label} vs {by_key[base]['label']}: not testable")
            continue
        diff = statistics.fmean(a) - statistics.fmean(b)
        lines.append(
            f"- {label} vs {by_key[base]['label']}: Δ MRR = {diff:+.4f}, "
            f"t = {test[0]:.2f}, p = {test[1]:.3g} (n = {len(a)}, {len(b)})"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="kg_hierarchy")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--test-epochs",
        type=int,
        default=None,
        help="epochs of the test runs (default --epochs); with the same --store the tuning "
        "studies are resumed, so a longer test re-uses the selection made at --epochs",
    )
    parser.add_argument("--rsgd-lr", type=float, nargs=2, default=(1e-2, 1e2))
    parser.add_argument("--radam-lr", type=float, nargs=2, default=(1e-4, 1.0))
    parser.add_argument("--sampler-seed", type=int, default=0)
    parser.add_argument("--store", default=None, help="results store (default: a temp file)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="2 trials, 1 seed, 2 epochs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.budget, args.seeds, args.epochs = 2, [0], 2
    if args.test_epochs is None:
        args.test_epochs = args.epochs
    torch.set_num_threads(1)
    if args.store is None:
        import tempfile

        args.store = str(Path(tempfile.mkdtemp(prefix="kg_rsam_")) / "store.db")
    load_start = load_average()
    started = time.perf_counter()
    results = []
    for key in args.methods:
        print(f"{args.task}: tuning {key}", file=sys.stderr, flush=True)
        results.append(run_method(args, key, args.store))
    facts = machine_facts(load_start)
    text = report(args, results, facts)
    wall, cpu = time.perf_counter() - started, time.process_time()
    text += f"\nTotal wall time {wall:.0f} s; CPU time {cpu:.0f} s.\n"
    payload = {"task": args.task, "args": vars(args), "machine": facts, "results": results}
    payload.update({"wall_s": wall, "cpu_s": cpu})
    write_outputs(text, json.loads(json.dumps(payload, default=str)), args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
