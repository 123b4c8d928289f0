"""A2Grad vs Adam and AMSGrad with the paper's grids (Deng, Cheng & Lan 2018, §6).

Two tasks: the MNIST-1D MLP (40-100-100-10, the stand-in for the paper's MNIST two-layer net)
and logistic regression on MNIST-1D (a linear 40 -> 10 layer; the paper's MNIST logistic
regression). The paper's grids: Adam/AMSGrad β1 = 0.9, β2 ∈ {0.99, 0.999}, lr ∈ {1e-4, 1e-3,
1e-2, 0.1}; A2Grad L ∈ {0.1, 1, 10}, β ∈ {10, 50, 100, 1000}, for each of uni / inc / exp.

Protocol: every grid point is trained once on a selection seed (``--select-seed``, not one of
the evaluation seeds); the grid point with the lowest final training loss (the paper's figures
plot training loss) is then trained on the evaluation seeds. The table gives the final training
loss and test accuracy (mean ± std) and Welch's t-test of A2Grad's best variant against Adam
and AMSGrad. One torch thread.

Usage:
    nice -n 5 python benchmarks/a2grad_vs_adam.py --epochs 20 --seeds 0 1 2 3 4 \
        --out /tmp/a2grad_vs_adam.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import torch
from torch import nn

from torchvalley.bench.runner import run_one
from torchvalley.bench.task import Task
from torchvalley.bench.tasks import get_task
from torchvalley.bench.tasks._common import CLASSIFICATION
from torchvalley.bench.tasks.mnist1d import load_mnist1d

ADAM_GRID = [
    f"{name}:lr={lr},betas=(0.9,{beta2})" + (",amsgrad=True" if name == "amsgrad" else "")
    for name in ("adam", "amsgrad")
    for beta2 in (0.99, 0.999)
    for lr in (1e-4, 1e-3, 1e-2, 0.1)
]
A2GRAD_GRID = [
    f"a2grad:variant={variant},lips={lips},beta={beta}"
    for variant in ("uni", "inc", "exp")
    for lips in (0.1, 1.0, 10.0)
    for beta in (10.0, 50.0, 100.0, 1000.0)
]


def logistic_regression_task() -> Task:
    """Logistic regression on MNIST-1D: one linear layer, cross-entropy, batch 128 (paper)."""
    return Task(
        name="mnist1d_logreg",
        description="MNIST-1D logistic regression (linear 40 -> 10)",
        model_name="Linear 40-10",
        build_model=lambda: nn.Linear(40, 10),
        load_data=functools.cache(load_mnist1d),  # an unregistered task's data is not cached
        **CLASSIFICATION,
        target=0.3,
        batch_size=128,
        default_epochs=20,
        default_data_seed=42,
    )


def method_of(spec: str) -> str:
    """'adam', 'amsgrad' or 'a2grad-<variant>' for a grid spec."""
    if spec.startswith("amsgrad"):
        return "amsgrad"
    if spec.startswith("a2grad"):
        return "a2grad-" + spec.split("variant=")[1].split(",")[0]
    return "adam"


def to_registry(spec: str) -> str:
    """The registry spec ('amsgrad:...' is 'adam:...,amsgrad=True')."""
    return spec.replace("amsgrad:", "adam:", 1) if spec.startswith("amsgrad:") else spec


def train(task: Task, spec: str, seed: int, epochs: int) -> dict:
    result = run_one(task, to_registry(spec), seed, epochs=epochs, progress=False)
    final_loss = result.train_loss if result.status == "finished" else float("inf")
    return {
        "spec": spec,
        "seed": seed,
        "status": result.status,
        "train_loss": final_loss,
        "test_accuracy": result.test_metric,
        "seconds": result.train_time_s,
    }


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t statistic and two-sided p value (scipy)."""
    from scipy import stats

    test = stats.ttest_ind(a, b, equal_var=False)
    return float(test.statistic), float(test.pvalue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--select-seed", type=int, default=100)
    parser.add_argument("--tasks", nargs="+", default=["mnist1d_mlp", "mnist1d_logreg"])
    parser.add_argument("--out", default="a2grad_vs_adam.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    report: dict = {"epochs": args.epochs, "seeds": args.seeds, "select_seed": args.select_seed}
    for name in args.tasks:
        task = logistic_regression_task() if name == "mnist1d_logreg" else get_task(name)
        grid = [
            train(task, spec, args.select_seed, args.epochs) for spec in ADAM_GRID + A2GRAD_GRID
        ]
        best: dict[str, dict] = {}
        for row in grid:
            method = method_of(row["spec"])
            if method not in best or row["train_loss"] < best[method]["train_loss"]:
                best[method] = row
        evaluated = {
            method: [train(task, row["spec"], seed, args.epochs) for seed in args.seeds]
            for method, row in best.items()
        }
        report[name] = {"grid": grid, "best": best, "evaluated": evaluated}
        print(f"== {name} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        for method, runs in evaluated.items():
            losses = [r["train_loss"] for r in runs]
            accuracies = [r["test_accuracy"] or 0.0 for r in runs]
            print(
                f"{method:12s} {best[method]['spec']:45s} loss {statistics.mean(losses):.4f} "
                f"± {statistics.stdev(losses):.4f}  acc {statistics.mean(accuracies):.4f} "
                f"± {statistics.stdev(accuracies):.4f}",
                file=sys.stderr,
                flush=True,
            )
        a2 = min(
            (m for m in evaluated if m.startswith("a2grad")),
            key=lambda m: statistics.mean(r["train_loss"] for r in evaluated[m]),
        )
        report[name]["tests"] = {
            f"{a2} vs {other} ({metric})": welch(
                [r[metric] for r in evaluated[a2]], [r[metric] for r in evaluated[other]]
            )
            for other in ("adam", "amsgrad")
            for metric in ("train_loss", "test_accuracy")
        }
    report["seconds"] = time.time() - started
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
