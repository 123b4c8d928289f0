"""Langevin step overhead: every splitting scheme's step as a ratio to an SGD step plus noise.

The comparison point is ``torch.optim.SGD(momentum=0.9).step()`` followed by one
``torch.randn_like`` per parameter: the least a noisy momentum method must do. Goal: <= 1.2x
for the default (uncompiled) path of every scheme.

Workload: the parameter shapes of a CIFAR-style ResNet-18 (11,173,962 float32 parameters in 62
tensors, :func:`step_overhead.resnet18_shapes`) with fixed random gradients. Every row owns its
parameters and optimizer state; the gradients are shared (read only).

Measurement (:mod:`_harness`'s protocol): for each thread count (``--threads``, default 1 and
2) in the same run, ``W`` warm-up steps per row, then ``R`` repeats, each timing a block of
``K`` steps of every row, round-robin with the starting row rotated every repeat (load drift on
a shared machine hits all rows alike), garbage collector off. Reported: median wall ms/step
over the repeats and ratio = median(row) / median(anchor); ``paired`` is the median of the
per-repeat ratios; ``min ratio`` the ratio of the fastest blocks (the least disturbed by other
processes); the process CPU time per step (``time.process_time``, all threads) and its ratio,
which a shared machine perturbs less than wall time.

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
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from _harness import (
    TimedRow,
    machine_facts,
    machine_lines,
    measure_round_robin,
    paired_ratio_median,
    torch_threads,
    write_outputs,
)
from step_overhead import make_reference_tensors, resnet18_shapes
from torchvalley.bench.machine import load_average
from torchvalley.dynamics import LangevinSplitting

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


@dataclasses.dataclass(kw_only=True)
class StepRow(TimedRow):
    """One row: ``step()`` on its own parameters; parts: wall seconds, process CPU seconds."""

    name: str
    step: Callable[[], object]

    def run(self, steps: int) -> tuple[float, float]:
        """Run ``steps`` steps; return their wall and process CPU seconds."""
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - start, time.process_time() - start_cpu


def _anchor(params: list[torch.Tensor]) -> Callable[[], None]:
    sgd = torch.optim.SGD(params, lr=1e-6, momentum=0.9)

    def step() -> None:
        sgd.step()
        for p in params:
            torch.randn_like(p)

    return step


def build(name: str, grads: list[torch.Tensor], params: list[torch.Tensor]) -> StepRow:
    """The row ``name``, on its own copy of the parameters."""
    params = [p.clone() for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    if name == ANCHOR:
        return StepRow(name=name, step=_anchor(params))
    hp = {**ROWS["baoab"], "fused": True} if name == "baoab-fused" else ROWS[name]
    return StepRow(name=name, step=LangevinSplitting(params, **hp).step)


def table(rows: list[StepRow]) -> list[str]:
    """The markdown table of one thread count: ratios to the anchor (the first row)."""
    anchor = rows[0]
    wall = [sample[0] for sample in anchor.samples_ms]
    cpu = [sample[1] for sample in anchor.samples_ms]
    lines = [
        "| row | ms/step (median) | ratio | paired ratio | min ratio | CPU ms/step | CPU ratio |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if row.status != "ok":
            lines.append(f"| {row.name} | {row.status}: {row.note} | | | | | |")
            continue
        row_wall = [sample[0] for sample in row.samples_ms]
        row_cpu = [sample[1] for sample in row.samples_ms]
        median, median_cpu = statistics.median(row_wall), statistics.median(row_cpu)
        lines.append(
            f"| {row.name} | {median:.1f} | {median / statistics.median(wall):.2f} | "
            f"{paired_ratio_median(row_wall, wall):.2f} | {min(row_wall) / min(wall):.2f} | "
            f"{median_cpu:.1f} | {median_cpu / statistics.median(cpu):.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; print (and with ``--out``, write) one markdown table per thread count."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fused", action="store_true", help="add the compiled baoab-fused row")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    if min(args.threads) < 1 or args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--threads, --repeats and --steps must be >= 1, --warmup >= 0")
    names = [ANCHOR, *args.rows] + (["baoab-fused"] if args.fused else [])
    load_start = load_average()
    params, grads = make_reference_tensors(resnet18_shapes())
    report = [
        "# Langevin step overhead (ResNet-18 shapes, 11,173,962 float32 parameters)",
        "",
        f"{args.warmup} warm-up steps, then {args.repeats} repeats x {args.steps} steps per row, "
        "rows interleaved round-robin; ratios to the first row, from the same run.",
    ]
    for threads in args.threads:
        with torch_threads(threads):
            rows = [build(name, grads, params) for name in names]
            measure_round_robin(
                rows, warmup=args.warmup, repeats=args.repeats, steps=args.steps, progress=False
            )
            report += ["", f"## {threads} thread(s)", "", *table(rows)]
            del rows
    report += ["", *machine_lines(machine_facts(load_start)), ""]
    write_outputs("\n".join(report), None, args.out, None)


if __name__ == "__main__":
    main()
