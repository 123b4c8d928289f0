"""Multirate fine-tuning vs train-all / head-only / progressive freezing (issue 12).

Task: ``mnist1d_transfer`` (torchvalley.bench.tasks.transfer): a 1-D CNN pretrained on MNIST-1D
classes 0-4, fine-tuned with a fresh head on classes 5-9. Every method uses SGD with momentum
(heavy ball, μ = 0.9) and the same lr h, batch size and number of steps:

* ``train_all``: every parameter every step (one full backward pass per step);
* ``head_only``: only the head (backward stops at the head: ``backward(inputs=head)``);
* ``progressive``: all layers for the first third of the steps, then conv2+conv3+head, then
  conv3+head... (the paper's progressively frozen baselines, compressed into one run);
* ``multirate_k{k}``: :class:`torchvalley.optim.Multirate`, head fast (h/k), backbone slow (h),
  linear drift; full backward pass once every k steps.

Multirate runs ``--multirate-epochs-factor`` (2) times as many epochs as the others: what is
compared is the time to reach the target accuracy, ``train_all``'s mean final accuracy minus
``--target-gap`` (0.3 pt). Reported per method over the seeds (mean ± std): final test accuracy,
training time (forward + backward + step; evaluation excluded) as CPU time of the training
thread and as wall-clock, CPU time to the target, and full backward passes. Plus the measured
split of one step into forward, full backward, head-only backward and optimizer step (median
CPU ms), which bounds what skipping the backbone's backward can save.

Single-threaded (``torch.set_num_threads(1)``); the methods are interleaved within each seed, in
an order rotated per seed. CPU time is the primary clock because the machine is shared
(wall-clock there measures the other tenants); on an idle machine the two agree.

    python benchmarks/multirate_transfer.py --seeds 5 --epochs 10 --out runs/multirate_transfer.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from torchvalley.bench.tasks.transfer import load_shift_data, load_transfer_data, pretrained_model
from torchvalley.optim import Multirate
from torchvalley.optim.multirate_partitions import head_partition

#: --task: the pretraining source of each fine-tuning task (bench/tasks/transfer.py)
_SOURCE = {"classes": "classes", "shift": "all"}

METHODS = ("train_all", "head_only", "progressive", "multirate_k2", "multirate_k5", "multirate_k10")


def _stages(model: torch.nn.Module) -> list[list[torch.Tensor]]:
    """Trainable sets of the progressive baseline: all, then from conv2 on, then conv3 on."""
    feats = list(model.features)
    convs = [i for i, m in enumerate(feats) if isinstance(m, torch.nn.Conv1d)]
    head = list(model.classifier.parameters())
    return [[p for m in feats[c:] for p in m.parameters()] + head for c in convs]


def run(method: str, seed: int, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    """One fine-tuning run; returns the accuracy curve against training wall-clock."""
    torch.manual_seed(seed)
    model = pretrained_model(seed, args.channels, args.pretrain_epochs, _SOURCE[args.task])
    (x, y), (x_test, y_test) = data.train, data.test
    head = list(model.classifier.parameters())
    sgd = {"lr": args.lr, "momentum": 0.9}
    if method.startswith("multirate"):
        k = int(method.split("_k")[1])
        # --matched-fast: h = k * lr, so the head steps with train_all's lr (h_F = lr)
        h = (args.multirate_lr or args.lr) * (k if args.matched_fast else 1)
        opt = Multirate(
            head_partition(model), base_optimizer="sgd", k=k, model=model, lr=h, momentum=0.9
        )
    else:
        params = head if method == "head_only" else list(model.parameters())
        opt = torch.optim.SGD(params, **sgd)
        stages = _stages(model)
    steps_per_epoch = -(-len(y) // args.batch_size)
    epochs = args.epochs * (args.multirate_epochs_factor if method.startswith("multirate") else 1)
    total = epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    clock, cpu, full, done, curve = 0.0, 0.0, 0, 0, []
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        if args.schedule == "cosine"
        else None
    )

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        model.train()
        return acc

    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), args.batch_size):
            batch = order[start : start + args.batch_size]
            t0, c0 = time.perf_counter(), time.thread_time()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[batch]), y[batch])
            if method.startswith("multirate"):
                opt.backward(loss)
            elif method == "train_all":
                loss.backward()
                full += 1
            elif method == "head_only":
                loss.backward(inputs=head)
            else:  # progressive: stage s of 3 trains from conv s on
                stage = min(3 * done // total, len(stages) - 1)
                loss.backward(inputs=stages[stage])
                full += stage == 0
            opt.step()
            if schedule is not None:
                schedule.step()
            clock += time.perf_counter() - t0
            cpu += time.thread_time() - c0
            done += 1
            if done % args.eval_every == 0 or done == total:
                curve.append((cpu, clock, done, evaluate()))
    if method.startswith("multirate"):
        full = opt.backward_passes["full"]
    return {"method": method, "seed": seed, "curve": curve, "full_backward": full, "steps": total}


def timing_split(args: argparse.Namespace, data: Any, repeats: int = 30) -> dict[str, float]:
    """Median CPU (thread) times (ms) of forward, full backward, head-only backward and the SGD
    step on one batch."""
    model = pretrained_model(0, args.channels, args.pretrain_epochs, _SOURCE[args.task])
    x, y = data.train[0][: args.batch_size], data.train[1][: args.batch_size]
    head = list(model.classifier.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    times: dict[str, list[float]] = {"forward": [], "backward_full": [], "backward_head": []}
    times["step"] = []
    for _ in range(repeats):
        for which in ("full", "head"):
            opt.zero_grad(set_to_none=True)
            t0 = time.thread_time()
            loss = F.cross_entropy(model(x), y)
            t1 = time.thread_time()
            loss.backward(inputs=None if which == "full" else head)
            t2 = time.thread_time()
            if which == "full":
                opt.step()
                times["step"].append(time.thread_time() - t2)
                times["forward"].append(t1 - t0)
            times[f"backward_{which}"].append(t2 - t1)
    return {key: 1e3 * statistics.median(v) for key, v in times.items()}


def _time_to(curve: list[tuple[float, float, int, float]], target: float) -> float | None:
    """CPU seconds of training until the test accuracy first reached ``target``."""
    return next((cpu for cpu, _, _, acc in curve if acc >= target), None)


def summarise(runs: list[dict[str, Any]], gap: float) -> dict[str, Any]:
    by = {m: [r for r in runs if r["method"] == m] for m in METHODS}
    finals = {m: [r["curve"][-1][3] for r in rs] for m, rs in by.items() if rs}

    def sd(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    target = statistics.mean(finals["train_all"]) - gap
    table = {}
    for method, rs in by.items():
        if not rs:
            continue
        cpus = [r["curve"][-1][0] for r in rs]
        clocks = [r["curve"][-1][1] for r in rs]
        reach = [_time_to(r["curve"], target) for r in rs]
        hit = [t for t in reach if t is not None]
        table[method] = {
            "final_acc": (statistics.mean(finals[method]), sd(finals[method])),
            "train_cpu_seconds": (statistics.mean(cpus), sd(cpus)),
            "train_wall_seconds": (statistics.mean(clocks), sd(clocks)),
            "cpu_seconds_to_target": (statistics.mean(hit), statistics.stdev(hit))
            if len(hit) > 1
            else (hit[0] if hit else None, None),
            "reached_target": f"{len(hit)}/{len(rs)}",
            "full_backward": statistics.mean(r["full_backward"] for r in rs),
        }
    return {"target_accuracy": target, "methods": table}


SCRATCH_METHODS = ("sgd", "biases_fast", "weights_fast", "random")


def from_scratch(args: argparse.Namespace) -> None:
    """The from-scratch partitions on ``mnist1d_cnn``: final test accuracy, mean ± std."""
    from torchvalley.bench.tasks import get_task

    task = get_task("mnist1d_cnn")
    data = task.data()
    (x, y), (x_test, y_test) = data.train, data.test
    finals: dict[str, list[float]] = {m: [] for m in SCRATCH_METHODS}
    for seed in range(args.seeds):
        shift = seed % len(SCRATCH_METHODS)
        for method in SCRATCH_METHODS[shift:] + SCRATCH_METHODS[:shift]:
            model = task.model(seed)
            sgd = {"lr": args.lr, "momentum": 0.9}
            if method == "sgd":
                opt: Any = torch.optim.SGD(model.parameters(), **sgd)
            else:
                partition = {"biases_fast": "biases", "weights_fast": "weights"}.get(
                    method, "random"
                )
                opt = Multirate(
                    model.parameters(),
                    model=model,
                    partition=partition,
                    k=5,
                    partition_seed=seed,
                    **sgd,
                )
            generator = torch.Generator().manual_seed(seed)
            model.train()
            for _ in range(args.epochs):
                order = torch.randperm(len(y), generator=generator)
                for start in range(0, len(y), args.batch_size):
                    batch = order[start : start + args.batch_size]
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x[batch]), y[batch])
                    opt.backward(loss) if method != "sgd" else loss.backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                acc = (model(x_test).argmax(1) == y_test).float().mean().item()
            finals[method].append(acc)
            print(f"seed {seed} {method:13s} test acc {acc:.4f}", flush=True)
    for method, accs in finals.items():
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{method:13s} {100 * statistics.mean(accs):.2f} ± {100 * sd:.2f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--task",
        choices=tuple(_SOURCE),
        default="classes",
        help="classes: mnist1d_transfer (new classes); shift: mnist1d_shift (shifted data)",
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument(
        "--multirate-epochs-factor",
        type=int,
        default=2,
        help="multirate runs this many times --epochs (time to target is what is compared)",
    )
    parser.add_argument("--target-gap", type=float, default=0.003)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--matched-fast", action="store_true", help="multirate h = k * lr (head at lr)"
    )
    parser.add_argument("--multirate-lr", type=float, default=None, help="h (default: --lr)")
    parser.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="lr schedule per batch (cosine: CosineAnnealingLR over each run's steps)",
    )
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="instead: mnist1d_cnn from scratch, SGD vs multirate weights/biases/random",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.from_scratch:
        from_scratch(args)
        return
    data = load_transfer_data(42) if args.task == "classes" else load_shift_data()
    methods = args.methods.split(",")
    started = time.process_time()
    split = timing_split(args, data)
    print("step time split (ms, median):", {k: round(v, 3) for k, v in split.items()})
    runs = []
    for seed in range(args.seeds):
        shift = seed % len(methods)
        for method in methods[shift:] + methods[:shift]:  # interleaved, rotated per seed
            runs.append(run(method, seed, args, data))
            r = runs[-1]
            cpu, wall, _, acc = r["curve"][-1]
            print(
                f"seed {seed} {method:14s} acc {acc:.4f} cpu {cpu:.2f}s wall {wall:.2f}s "
                f"full bwd {r['full_backward']}",
                flush=True,
            )
    summary = summarise(runs, args.target_gap)
    summary.update(
        split_ms=split,
        cpu_seconds=time.process_time() - started,
        args={k: str(v) for k, v in vars(args).items()},
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
