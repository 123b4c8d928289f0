"""NGHF vs HF, NG, SGD and Adam: training loss against updates and wall-clock (5 seeds).

Haider & Woodland (Interspeech 2018) claim that, for the same number of updates, NGHF reduces
the loss more than NG or HF alone; the journal version (Haider, Zhang & Woodland,
arXiv:2103.07554) that 5-8 CG iterations suffice. Tested at small scale on two tasks: the
MNIST-1D MLP (40-100-100-10 ReLU, 4000 training signals) and the digits MLP (64-128-10 ReLU,
1437 training images).

Protocol, per seed: the model is initialised from the seed; every update draws a gradient batch
of ``--batch`` examples (without replacement, from a generator seeded by the seed) and, for the
second-order methods, takes the first ``--curvature-batch`` of them as the curvature sub-batch
(exact Gauss-Newton / empirical-Fisher products, ``loss_fn`` + ``curvature_batch``). After each
update the loss on the whole training set is recorded (not timed) with the cumulative time of
the updates. Methods: ``nghf``, ``hf``, ``ng`` at their defaults (cg_max_iter 50, 8 inner
Fisher iterations for NGHF, damping 1 adapted by Levenberg-Marquardt, CG backtracking, Armijo),
``nghf_cg8`` and ``hf_cg8`` (the outer CG capped at 8 iterations), SGD (lr 0.05, momentum 0.9)
and Adam (lr 1e-3) on the same gradient batches. One torch thread.

Usage:
    nice -n 5 python benchmarks/nghf_study.py --seeds 0 1 2 3 4 --updates 10 \
        --first-order-updates 200 --out /tmp/nghf_study.json
    python benchmarks/nghf_study.py --updates 10 --merge /tmp/a.json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_facts
from torchvalley.optim.nghf import NGHF

SECOND_ORDER = {
    "nghf": {"mode": "nghf"},
    "hf": {"mode": "hf"},
    "ng": {"mode": "ng"},
    "nghf_cg8": {"mode": "nghf", "cg_max_iter": 8},
    "hf_cg8": {"mode": "hf", "cg_max_iter": 8},
}
FIRST_ORDER = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
}


def load(task: str) -> tuple[torch.Tensor, torch.Tensor, callable]:
    if task == "mnist1d_mlp":
        from torchvalley.bench.tasks.mnist1d import load_mnist1d

        data = load_mnist1d(42)

        def build() -> nn.Module:
            return nn.Sequential(
                nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)
            )
    else:
        from torchvalley.bench.tasks.digits import load_digits_data

        data = load_digits_data(0)

        def build() -> nn.Module:
            return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    return data.train[0], data.train[1], build


def run(task: str, method: str, seed: int, updates: int, batch: int, curvature_batch: int):
    inputs, targets, build = load(task)
    torch.manual_seed(seed)
    model = build()
    params = list(model.parameters())
    if method in SECOND_ORDER:
        opt = NGHF(params, model=model, loss_fn=F.cross_entropy, **SECOND_ORDER[method])
    else:
        opt = FIRST_ORDER[method](params)
    draw = torch.Generator().manual_seed(10_000 + seed)

    def full_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(inputs), targets))

    losses, times, cg, ng_cg, passes = [full_loss()], [0.0], [], [], []
    elapsed = 0.0
    for _ in range(updates):
        index = torch.randperm(inputs.shape[0], generator=draw)[:batch]
        x, y = inputs[index], targets[index]
        calls = [0]

        def closure(x=x, y=y, calls=calls) -> torch.Tensor:
            calls[0] += 1
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        start = time.perf_counter()
        if method in SECOND_ORDER:
            opt.step(closure, curvature_batch=(x[:curvature_batch], y[:curvature_batch]))
            shared = opt.state[params[0]]
            cg.append(shared["cg_iterations"])
            ng_cg.append(shared["ng_cg_iterations"])
        else:
            opt.step(closure)
        elapsed += time.perf_counter() - start
        passes.append(calls[0])
        losses.append(full_loss())
        times.append(elapsed)
    return {"loss": losses, "time": times, "cg": cg, "ng_cg": ng_cg, "passes": passes}


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t and two-sided p (scipy)."""
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["mnist1d_mlp", "digits_mlp"])
    parser.add_argument("--methods", nargs="+", default=[*SECOND_ORDER, *FIRST_ORDER])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--updates", type=int, default=25)
    parser.add_argument("--first-order-updates", type=int, default=250)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--curvature-batch", type=int, default=250)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="print the report of saved --out files (runs of one task split over processes)",
    )
    args = parser.parse_args()
    if args.merge:
        merged: dict = {"runs": {}}
        for path in args.merge:
            for task, methods in json.loads(path.read_text())["runs"].items():
                for method, runs in methods.items():
                    merged["runs"].setdefault(task, {}).setdefault(method, {}).update(runs)
        print(report(merged, args.updates))
        return
    torch.set_num_threads(1)
    facts = machine_facts()
    results: dict = {"args": vars(args) | {"out": str(args.out)}, "machine": facts, "runs": {}}
    for task in args.tasks:
        for seed in args.seeds:  # round robin over methods within a seed
            for method in args.methods:
                updates = args.updates if method in SECOND_ORDER else args.first_order_updates
                batch = min(args.batch, 1437 if task == "digits_mlp" else 4000)
                out = run(task, method, seed, updates, batch, args.curvature_batch)
                results["runs"].setdefault(task, {}).setdefault(method, {})[seed] = out
                print(
                    f"{task} {method} seed {seed}: loss {out['loss'][-1]:.4f} after "
                    f"{len(out['loss']) - 1} updates, {out['time'][-1]:.1f}s",
                    flush=True,
                )
                if args.out:
                    args.out.write_text(json.dumps(results))
    results["machine"] = machine_facts(facts["load_start"])
    if args.out:
        args.out.write_text(json.dumps(results))
    print(report(results, args.updates))


def report(results: dict, updates: int) -> str:
    lines = []
    for task, methods in results["runs"].items():
        lines.append(f"\n### {task}\n")
        marks = sorted({1, 5, updates})
        lines.append(
            "| method | "
            + " | ".join(f"loss @ {k} upd." for k in marks)
            + " | time / update (s) | CG iter. (outer) | passes / update |"
        )
        lines.append("|---" * (len(marks) + 4) + "|")
        for method, runs in methods.items():
            cells = []
            for k in marks:
                values = [r["loss"][k] for r in runs.values() if len(r["loss"]) > k]
                cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
            per = [r["time"][-1] / (len(r["time"]) - 1) for r in runs.values()]
            cgs = [c for r in runs.values() for c in r["cg"]]
            passes = [c for r in runs.values() for c in r["passes"]]
            cg_text = f"{statistics.mean(cgs):.1f} (max {max(cgs)})" if cgs else "-"
            lines.append(
                f"| {method} | "
                + " | ".join(cells)
                + f" | {statistics.mean(per):.3f} | {cg_text} | {statistics.mean(passes):.1f} |"
            )
        if "nghf" in methods:
            lines.append("")
            for other in ("hf", "ng", "nghf_cg8", "hf_cg8"):
                if other not in methods:
                    continue
                a = [r["loss"][updates] for r in methods["nghf"].values()]
                b = [r["loss"][updates] for r in methods[other].values()]
                t, p = welch(a, b)
                lines.append(
                    f"- nghf vs {other} after {updates} updates: Welch t = {t:.2f}, p = {p:.3g}"
                )
        for method in ("sgd", "adam"):
            if method not in methods or "nghf" not in methods:
                continue
            budget = statistics.mean(r["time"][-1] for r in methods["nghf"].values())
            at = []
            for r in methods[method].values():
                k = max(i for i, t in enumerate(r["time"]) if t <= budget or i == 0)
                at.append(r["loss"][k])
            lines.append(
                f"- {method} at NGHF's wall-clock ({budget:.1f}s): loss "
                f"{statistics.mean(at):.4f} ± {statistics.stdev(at):.4f}"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
