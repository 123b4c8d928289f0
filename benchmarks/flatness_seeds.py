"""λ_max of SGD's and SAM's solutions over many seeds, with significance tests.

Trains each spec on a task with the harness's own training loop (``torchvalley.bench.run_one``:
the task's epochs and batch size, model initialisation and data order from the seed), then
measures the largest Hessian eigenvalue of the training loss on the first ``--examples``
training examples (BatchNorm in eval mode, Lanczos to a relative accuracy of 1e-4), as
``torchvalley landscape`` does. Reports per-seed values, mean ± sample std, and three tests of
"the two specs have the same λ_max": Welch's t-test, the Mann–Whitney U test (two-sided), and,
since runs with the same seed share the initial weights and data order, the paired t-test and
the Wilcoxon signed-rank test on the per-seed differences.

Usage::

    python benchmarks/flatness_seeds.py --seeds 0 1 2 3 4 5 6 7 8 9 --threads 1 \\
        [--task mnist1d_cnn] [--spec SPEC --spec SPEC] [--out FILE.md] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from _harness import machine_facts, machine_lines, torch_threads, write_outputs
from torchvalley.bench.machine import load_average
from torchvalley.bench.runner import run_one
from torchvalley.bench.tasks import get_task
from torchvalley.landscape import CurvatureOperator, hessian_eigenvalues

DEFAULT_SPECS = ("sgd:lr=0.05,momentum=0.9", "sam:base_optimizer=sgd,lr=0.05,momentum=0.9,rho=0.05")


def lambda_max(model: torch.nn.Module, task: Any, examples: int, seed: int) -> float:
    """λ_max of the task's training loss on its first ``examples`` training examples."""
    inputs, targets = task.data().train
    operator = CurvatureOperator.of(model, task.loss_fn, (inputs[:examples], targets[:examples]))
    generator = torch.Generator().manual_seed(seed)
    return float(hessian_eigenvalues(operator, k=1, tol=1e-4, generator=generator).eigenvalues[0])


def tests(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """p-values of the two-sample and paired tests of equal λ_max."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return {
        "welch_t_p": float(stats.ttest_ind(a, b, equal_var=False).pvalue),
        "mann_whitney_p": float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue),
        "paired_t_p": float(stats.ttest_rel(a, b).pvalue),
        "wilcoxon_p": float(stats.wilcoxon(diffs).pvalue) if any(diffs) else 1.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print the report, write ``--out``/``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d_cnn")
    parser.add_argument("--spec", action="append", help="exactly two specs (default: SGD, SAM)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, help="default: the task's")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    specs = args.spec or list(DEFAULT_SPECS)
    if len(specs) != 2:
        parser.error("give exactly two --spec")
    task = get_task(args.task)
    load_start = load_average()
    rows: dict[str, list[dict[str, float]]] = {spec: [] for spec in specs}
    with torch_threads(args.threads):
        for seed in args.seeds:
            for spec in specs:
                result = run_one(task, spec, seed, epochs=args.epochs, keep_model=True)
                value = lambda_max(result.model, task, args.examples, seed)
                rows[spec].append(
                    {"seed": seed, "lambda_max": value, "test_metric": result.test_metric}
                )
                print(f"seed {seed} {spec}: λ_max {value:.4g}", flush=True)
        facts = machine_facts(load_start)  # inside: the thread count of the runs
    values = [[r["lambda_max"] for r in rows[spec]] for spec in specs]
    payload = {
        "machine": facts,
        "task": args.task,
        "epochs": args.epochs,
        "examples": args.examples,
        "seeds": args.seeds,
        "rows": rows,
        "tests": tests(*values),
    }
    write_outputs(render(payload, specs), payload, args.out, args.json)
    return 0


def render(payload: dict[str, Any], specs: Sequence[str]) -> str:
    """The markdown report."""
    rows, p = payload["rows"], payload["tests"]
    lines = [
        f"# λ_max over seeds: {payload['task']}",
        "",
        *machine_lines(payload["machine"]),
        f"- seeds {payload['seeds']}; λ_max on the first {payload['examples']} training "
        "examples, BatchNorm in eval mode, Lanczos tol 1e-4",
        "",
        "| seed | " + " | ".join(f"`{s}` λ_max" for s in specs) + " | difference |",
        "|---|" + "--:|" * (len(specs) + 1),
    ]
    for a, b in zip(rows[specs[0]], rows[specs[1]], strict=True):
        diff = a["lambda_max"] - b["lambda_max"]
        lines.append(
            f"| {a['seed']} | {a['lambda_max']:.3f} | {b['lambda_max']:.3f} | {diff:+.3f} |"
        )
    means = []
    for spec in specs:
        v = [r["lambda_max"] for r in rows[spec]]
        means.append(f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}")
    lines.append(f"| mean ± std | {means[0]} | {means[1]} | |")
    lines += [
        "",
        "| test (two-sided) | p |",
        "|---|--:|",
        f"| Welch's t-test | {p['welch_t_p']:.3g} |",
        f"| Mann–Whitney U | {p['mann_whitney_p']:.3g} |",
        f"| paired t-test (same seed: same init and data order) | {p['paired_t_p']:.3g} |",
        f"| Wilcoxon signed-rank (paired) | {p['wilcoxon_p']:.3g} |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
