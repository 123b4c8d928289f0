"""ABS / ABSA vs fixed small and large batches on the MNIST-1D CNN (Yao et al. 2018, small scale).

Four methods, SGD with momentum 0.9 underneath, 12 epochs (the task's default is 20; cut for
the shared CPU):

* ``small``: batch 100, lr 0.05 (the demo's SGD row);
* ``large``: batch 800 (8x), lr 0.4 (linear scaling, the rule ABS applies);
* ``abs``: batch 100 grown by the Hessian schedule up to 8x (``max_ratio=8``), lr scaled with it;
* ``absa``: ABS with 20% FGSM examples (ε = 0.005, HessianFlow's default) until epoch 6
  (``epochs // 2``, as HessianFlow).

HessianFlow's ``duration = 10`` is for runs of 90-200 epochs; here ``duration = 2`` of 12,
the other settings are HessianFlow's defaults.

Reported per method (mean ± std over the seeds): SGD steps (base updates) to the task's target
test accuracy (0.9; runs that never reach it are counted and left out of the mean), final test
accuracy, and test accuracy under FGSM at ε ∈ {0.005, 0.05} (eval mode, examples clamped to the
test set's range). Welch's t-test of each method against ``small``. One torch thread.

Usage:
    nice -n 5 python benchmarks/abs_large_batch.py --seeds 0 1 2 3 4 --out /tmp/abs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from torchvalley.attacks import fgsm
from torchvalley.bench.runner import run_one
from torchvalley.bench.tasks import get_task

TASK = "mnist1d_cnn"
METHODS = {
    "small": ("sgd:lr=0.05,momentum=0.9", 100),
    "large": ("sgd:lr=0.4,momentum=0.9", 800),
    "abs": ("abs:lr=0.05,momentum=0.9,max_ratio=8,duration=2", 100),
    "absa": (
        "absa:lr=0.05,momentum=0.9,max_ratio=8,duration=2,adversarial_fraction=0.2,"
        "epsilon=0.005,adversarial_epochs=6",
        100,
    ),
}
EPSILONS = (0.005, 0.05)


def robust_accuracy(model: torch.nn.Module, task, epsilon: float) -> float:
    inputs, targets = task.data().test
    bounds = (float(inputs.min()), float(inputs.max()))
    adversarial = fgsm(model, task.loss_fn, inputs, targets, epsilon, bounds=bounds)
    model.eval()
    with torch.no_grad():
        accuracy = float(task.metric_fn(model(adversarial), targets))
    model.train()
    return accuracy


def run(method: str, seed: int, epochs: int) -> dict:
    task = get_task(TASK)
    spec, batch_size = METHODS[method]
    result = run_one(
        task, spec, seed, epochs=epochs, batch_size=batch_size, progress=False, keep_model=True
    )
    measured = {(e, name): value for e, name, value in result.measurements}
    if method.startswith("abs"):
        updates = [measured[(e, "abs_updates")] for e in range(1, epochs + 1)]
        ratios = [measured[(e, "abs_ratio")] for e in range(1, epochs + 1)]
        eigenvalues = [measured.get((e, "abs_lambda_max")) for e in range(1, epochs + 1)]
    else:
        steps_per_epoch = -(-task.data().train[0].shape[0] // batch_size)
        updates = [steps_per_epoch * e for e in range(1, epochs + 1)]
        ratios, eigenvalues = None, None
    target_epoch = result.epoch_to_target
    steps_to_target = None
    if target_epoch is not None:
        steps_to_target = 0 if target_epoch == 0 else updates[target_epoch - 1]
    row = {
        "method": method,
        "seed": seed,
        "status": result.status,
        "test_accuracy": result.test_metric,
        "epoch_to_target": target_epoch,
        "steps_to_target": steps_to_target,
        "updates": updates[-1],
        "ratios": ratios,
        "eigenvalues": eigenvalues,
        "train_time_s": result.train_time_s,
        "test_curve": [record.test_metric for record in result.history],
    }
    if result.model is not None:
        for epsilon in EPSILONS:
            row[f"fgsm_{epsilon}"] = robust_accuracy(result.model, task, epsilon)
    return row


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy import stats

    test = stats.ttest_ind(a, b, equal_var=False)
    return float(test.statistic), float(test.pvalue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", default="abs_large_batch.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    rows = []
    for seed in args.seeds:  # seeds outer: a partial run still compares every method
        for method in args.methods:
            rows.append(run(method, seed, args.epochs))
            print(
                json.dumps({k: v for k, v in rows[-1].items() if k != "test_curve"}),
                file=sys.stderr,
                flush=True,
            )
            with open(args.out, "w") as handle:
                json.dump({"rows": rows, "seconds": time.time() - started}, handle, indent=1)
    summary = {}
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {
            key: (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
            for key in ("test_accuracy", "steps_to_target", *[f"fgsm_{e}" for e in EPSILONS])
            if (values := [r[key] for r in mine if r.get(key) is not None])
        }
        summary[method]["reached"] = sum(r["steps_to_target"] is not None for r in mine)
    small = [r for r in rows if r["method"] == "small"]
    tests = {}
    for method in args.methods:
        if method == "small":
            continue
        mine = [r for r in rows if r["method"] == method]
        for key in ("test_accuracy", *[f"fgsm_{e}" for e in EPSILONS]):
            tests[f"{method} vs small ({key})"] = welch(
                [r[key] for r in mine], [r[key] for r in small]
            )
    with open(args.out, "w") as handle:
        json.dump(
            {"rows": rows, "summary": summary, "tests": tests, "seconds": time.time() - started},
            handle,
            indent=1,
        )
    print(json.dumps(summary, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
