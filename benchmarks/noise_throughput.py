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
import gc
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from torchvalley.bench.machine import cpu_model, load_average
from torchvalley.noise import DEFAULT_BLOCK_SIZE, CounterNoise


def _load_shapes() -> list[tuple[int, ...]]:
    spec = importlib.util.spec_from_file_location(
        "step_overhead", Path(__file__).with_name("step_overhead.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_overhead"] = module  # dataclasses in it look their module up
    spec.loader.exec_module(module)
    return module.resnet18_shapes()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    shapes = _load_shapes()
    params = [torch.zeros(s) for s in shapes]
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

    rows: dict[str, Callable[[], None]] = {
        "[torch.randn_like(p) for p in params] (reference)": randn_like_list,
        f"CounterNoise.gaussian_like (block {args.block_size})": counter_full,
        "torch.randn_like per tensor, each freed at once": randn_like_each,
        "CounterNoise.gaussian per tensor, each freed at once": counter_each,
        "CounterNoise sharded: 2nd half of each tensor": counter_shard,
    }
    names = list(rows)
    for _ in range(args.warmup):
        for fn in rows.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.disable()
    try:
        for r in range(args.repeats):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                start = time.perf_counter()
                rows[name]()
                times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        gc.enable()

    ref = statistics.median(times[names[0]])
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {cpu_model()}, "
        f"os.cpu_count() {os.cpu_count()}, load average {load_average()}; "
        f"{len(params)} tensors, {total:,} float32 elements; "
        f"{args.repeats} interleaved repeats\n"
    )
    print("| row | median ms | IQR ms | ratio to reference |")
    print("|---|---:|---:|---:|")
    for name in names:
        q = statistics.quantiles(times[name], n=4)
        med = statistics.median(times[name])
        print(f"| {name} | {med:.1f} | {q[0]:.1f}-{q[2]:.1f} | {med / ref:.3f} |")


if __name__ == "__main__":
    main()
