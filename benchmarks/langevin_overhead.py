"""Langevin step overhead: every splitting scheme's step as a ratio to an SGD step plus noise.

The comparison point is ``torch.optim.SGD(momentum=0.9).step()`` followed by one
``torch.randn_like`` per parameter: the least a noisy momentum method must do. Goal: <= 1.2x
for the default (uncompiled) path of every scheme.

Workload: the parameter shapes of a CIFAR-style ResNet-18 (11,173,962 float32 parameters in 62
tensors, :func:`step_overhead.resnet18_shapes`) with fixed random gradients. Every row owns its
parameters and optimizer state; the gradients are shared (read only).

Measurement: for each thread count (``--threads``, default 1 and 2) in the same run, ``W``
warm-up steps per row, then ``R`` repeats, each timing a block of ``K`` steps of every row,
round-robin with the starting row rotated every repeat (load drift on a shared machine hits all
rows alike), garbage collector off. Reported: median wall ms/step over the repeats and
ratio = median(row) / median(anchor); ``paired`` is the median of the per-repeat ratios;
``min ratio`` the ratio of the fastest blocks (the least disturbed by other processes); the
process CPU time per step (``time.process_time``, all threads) and its ratio, which a shared
machine perturbs less than wall time.

Rows: ``sgld``; ``baoab`` (the default scheme ``BAOAB``), ``obabo``, ``baoa``, ``overdamped``
(BAOAB limit, LOL's partition), ``sghmc`` (``FBA``), ``sgnht`` (``BACDEDCAB``);
``--fused`` adds ``baoab-fused`` (``fused=True``: compiled on its first warm-up step).

On a shared machine run with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP workers that spin between
parallel regions steal the CPU other processes need, which made every 2-thread row (the anchor
included) 10-25x slower and the ratios meaningless in our runs.

Usage: python benchmarks/langevin_overhead.py [--threads 1 2] [--repeats 7] [--steps 3] [--fused]
[--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from torchvalley.dynamics import LangevinSplitting

try:  # the shared workload (benchmarks/ is on sys.path when this file runs as a script)
    from step_overhead import make_reference_tensors, resnet18_shapes
except ImportError as error:  # pragma: no cover - the script lives next to step_overhead.py
    raise SystemExit(f"run as: python benchmarks/langevin_overhead.py ({error})") from None

ANCHOR = "sgd-momentum + randn_like"
_COMMON = {"lr": 1e-6, "friction": 1.0, "temperature": 1e-4, "seed": 0}
ROWS: dict[str, dict] = {
    "sgld": {"dynamics": "sgld", "lr": 1e-6, "temperature": 1e-4},
    "baoab": {**_COMMON},
    "obabo": {**_COMMON, "scheme": "OBABO"},
    "baoa": {**_COMMON, "scheme": "BAOA"},
    "overdamped": {**_COMMON, "dynamics": "overdamped"},
    "sghmc": {**_COMMON, "dynamics": "sghmc"},
    "sgnht": {**_COMMON, "dynamics": "adaptive"},
}


def _anchor(params: list[torch.Tensor]) -> Callable[[], None]:
    sgd = torch.optim.SGD(params, lr=1e-6, momentum=0.9)

    def step() -> None:
        sgd.step()
        for p in params:
            torch.randn_like(p)

    return step


def build(name: str, grads: list[torch.Tensor], params: list[torch.Tensor]) -> Callable[[], None]:
    """The step function of one row, on its own copy of the parameters."""
    params = [p.clone() for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    if name == ANCHOR:
        return _anchor(params)
    hp = {**ROWS["baoab"], "fused": True} if name == "baoab-fused" else ROWS[name]
    return LangevinSplitting(params, **hp).step


def measure(
    names: list[str], threads: int, repeats: int, steps: int, warmup: int
) -> tuple[dict, dict]:
    """Per-row per-step wall and process-CPU seconds of each repeat, rows interleaved."""
    torch.set_num_threads(threads)
    params, grads = make_reference_tensors(resnet18_shapes())
    rows = {name: build(name, grads, params) for name in names}
    for fn in rows.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    gc.disable()
    try:
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                fn = rows[name]
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    fn()
                times[name].append((time.perf_counter() - start) / steps)
                cpu[name].append((time.process_time() - start_cpu) / steps)
    finally:
        gc.enable()
    return times, cpu


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one markdown table per thread count."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fused", action="store_true", help="add the compiled baoab-fused row")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", help="also write the tables (markdown) to this file")
    args = parser.parse_args(argv)
    if min(args.threads) < 1 or args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--threads, --repeats and --steps must be >= 1, --warmup >= 0")
    names = [ANCHOR, *args.rows] + (["baoab-fused"] if args.fused else [])
    lines = [
        f"# {datetime.datetime.now().isoformat(timespec='seconds')}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs), load "
        f"average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.repeats} repeats x "
        f"{args.steps} steps, {args.warmup} warm-up steps, rows interleaved round-robin"
    ]
    print(lines[0])
    for threads in args.threads:
        times, cpu = measure(names, threads, args.repeats, args.steps, args.warmup)
        base, base_cpu = statistics.median(times[ANCHOR]), statistics.median(cpu[ANCHOR])
        table = [
            f"\n## {threads} thread(s)\n",
            "| row | ms/step (median) | ratio | paired ratio | min ratio | CPU ms/step "
            "| CPU ratio |\n|---|--:|--:|--:|--:|--:|--:|",
        ]
        for name in names:
            paired = statistics.median(
                t / a for t, a in zip(times[name], times[ANCHOR], strict=True)
            )
            median, median_cpu = statistics.median(times[name]), statistics.median(cpu[name])
            fastest = min(times[name]) / min(times[ANCHOR])
            table.append(
                f"| {name} | {1e3 * median:.1f} | {median / base:.2f} | {paired:.2f} | "
                f"{fastest:.2f} | {1e3 * median_cpu:.1f} | {median_cpu / base_cpu:.2f} |"
            )
        print("\n".join(table), flush=True)
        lines += table
    lines.append(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
