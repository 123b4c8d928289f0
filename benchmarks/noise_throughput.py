"""Noise throughput: ``torch.randn_like`` vs :class:`torchvalley.noise.CounterNoise` on CPU.

Draws one N(0, 1) tensor per parameter of the CIFAR ResNet-18 used by
``benchmarks/step_overhead.py`` (62 tensors, 11,173,962 float32 elements) and times, per row:

* ``[torch.randn_like(p) for p in params]`` (global generator; the reference) and
  ``CounterNoise.gaussian_like`` (one keyed draw per tensor, blocks of ``--block-size``): all
  62 outputs alive at once, as a foreach optimizer holds them;
* the same two, with each output freed before the next draw (the allocator then reuses memory,
  which is faster than touching 45 MB of fresh pages; compare rows of the same kind only);
* a sharded draw: the second half ``[numel // 2, numel)`` of every tensor, as an FSDP rank
  holding half of each parameter would draw it (half the elements; reported per call).

Rows are timed in interleaved repeats (starting row rotated each repeat, garbage collector off);
the table shows the median ms per call, the inter-quartile range and the ratio of medians to
the reference. Usage: ``python benchmarks/noise_throughput.py [--repeats 15] [--threads N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import torch

from _harness import (
    TimedRow,
    machine_facts,
    machine_lines,
    measure_round_robin,
    time_summary,
    torch_threads,
)
from step_overhead import resnet18_shapes
from torchvalley.bench.machine import load_average
from torchvalley.noise import DEFAULT_BLOCK_SIZE, CounterNoise


@dataclasses.dataclass
class Call(TimedRow):
    """One row: a function timed per call."""

    label: str
    fn: Callable[[], None]

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` calls."""
        start = time.perf_counter()
        for _ in range(steps):
            self.fn()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    params = [torch.zeros(s) for s in resnet18_shapes()]
    total = sum(p.numel() for p in params)
    noise = CounterNoise(0, block_size=args.block_size)
    counter = {"step": 0}

    def randn_like_list() -> None:
        out = [torch.randn_like(p) for p in params]
        del out

    def counter_full() -> None:
        counter["step"] += 1
        out = noise.gaussian_like(params, step=counter["step"])
        del out

    def randn_like_each() -> None:
        for p in params:
            torch.randn_like(p)

    def counter_each() -> None:
        counter["step"] += 1
        for i, p in enumerate(params):
            noise.gaussian(p, step=counter["step"], index=i)

    def counter_shard() -> None:
        counter["step"] += 1
        for i, p in enumerate(params):
            n = p.numel()
            noise.gaussian(n - n // 2, step=counter["step"], index=i, offset=n // 2, numel_total=n)

    rows = [
        Call(label="[torch.randn_like(p) for p in params] (reference)", fn=randn_like_list),
        Call(label=f"CounterNoise.gaussian_like (block {args.block_size})", fn=counter_full),
        Call(label="torch.randn_like per tensor, each freed at once", fn=randn_like_each),
        Call(label="CounterNoise.gaussian per tensor, each freed at once", fn=counter_each),
        Call(label="CounterNoise sharded: 2nd half of each tensor", fn=counter_shard),
    ]
    load_start = load_average()
    measure_round_robin(rows, warmup=args.warmup, repeats=args.repeats, steps=1, progress=False)
    ref = time_summary(rows[0].times_ms)["median_ms"]
    print("\n".join(machine_lines(machine_facts(load_start))))
    print(
        f"- {len(params)} tensors, {total:,} float32 elements; {args.repeats} interleaved repeats\n"
    )
    print("| row | median ms | IQR ms | ratio to reference |")
    print("|---|---:|---:|---:|")
    for row in rows:
        s = time_summary(row.times_ms)
        print(
            f"| {row.label} | {s['median_ms']:.1f} | {s['q1_ms']:.1f}-{s['q3_ms']:.1f} | "
            f"{s['median_ms'] / ref:.3f} |"
        )


if __name__ == "__main__":
    main()
