"""Shared pieces of the benchmark scripts: interleaved timing, versions, machine facts, writers.

A benchmark script in this folder imports it as a sibling module (``python benchmarks/x.py``
puts ``benchmarks/`` first on ``sys.path``)::

    from _harness import TimedRow, machine_facts, measure_round_robin, write_outputs

The timing protocol every script shares (what the results pages call "rows interleaved"):

* every row owns its tensors and optimizer state; ``warmup`` steps per row first;
* then ``repeats`` rounds; in each round every live row runs one block of ``steps`` steps
  (``time.perf_counter``, garbage collector off), the starting row rotated by one per round so
  that load drift on a shared machine falls on all rows alike;
* a row reports the per-step time of each block (and optionally parts of it, e.g. the time spent
  inside a closure); the summary is the median and quartiles over the rounds, and ratios between
  rows come from the same run (ratio of medians, or the median of per-round paired ratios, which
  is more robust to drift).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from torchvalley.bench.machine import cpu_model, load_average

__all__ = [
    "TimedRow",
    "fmt_ms",
    "import_quietly",
    "library_version",
    "machine_facts",
    "machine_lines",
    "measure_round_robin",
    "paired_ratio_median",
    "quartiles",
    "time_summary",
    "torch_threads",
    "write_outputs",
]


@dataclasses.dataclass(kw_only=True)
class TimedRow:
    """A row that :func:`measure_round_robin` times; subclasses implement :meth:`run`.

    Attributes:
        status: ``"ok"`` while the row is timed; ``"error"`` after :meth:`fail`, ``"skipped"``
            for rows that were never meant to run (both are left out of later rounds).
        note: free text for the report (the error's first line after :meth:`fail`).
        samples_ms: one tuple per round: milliseconds per step of the whole block, then of each
            part :meth:`run` reported.
    """

    status: str = "ok"
    note: str = ""
    samples_ms: list[tuple[float, ...]] = dataclasses.field(default_factory=list)

    def run(self, steps: int) -> float | tuple[float, ...]:
        """Run ``steps`` steps; return their seconds (or ``(total, part, ...)`` seconds)."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(steps)")

    def record(self, per_step_ms: tuple[float, ...]) -> None:
        """Keep one round's per-step milliseconds."""
        self.samples_ms.append(per_step_ms)

    def fail(self, error: BaseException) -> None:
        """Mark the row as failed, keeping the first line of the error."""
        self.status = "error"
        self.note = f"{type(error).__name__}: {error}".splitlines()[0][:200]

    @property
    def times_ms(self) -> list[float]:
        """Milliseconds per step of each round's whole block."""
        return [sample[0] for sample in self.samples_ms]


def measure_round_robin(
    rows: Sequence[TimedRow], *, warmup: int, repeats: int, steps: int, progress: bool = True
) -> None:
    """Warm up every row, then time ``repeats`` interleaved rounds of ``steps`` steps per row.

    Each round visits every live row once, starting one row further along than the previous
    round. A row whose step raises is failed (:meth:`TimedRow.fail`) and left out of later
    rounds; the others go on.
    """
    for row in rows:
        if row.status == "ok" and warmup > 0:
            try:
                row.run(warmup)
            except Exception as error:
                row.fail(error)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for repeat in range(repeats):
            live = [row for row in rows if row.status == "ok"]
            if not live:
                break
            shift = repeat % len(live)
            for row in live[shift:] + live[:shift]:
                try:
                    seconds = row.run(steps)
                except Exception as error:
                    row.fail(error)
                    continue
                parts = seconds if isinstance(seconds, tuple) else (seconds,)
                row.record(tuple(1e3 * part / steps for part in parts))
            if progress:
                print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    finally:
        if gc_was_enabled:
            gc.enable()


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (inclusive method; one value: itself thrice)."""
    if not values:
        raise ValueError("quartiles of an empty sequence")
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def time_summary(times_ms: Sequence[float]) -> dict[str, float]:
    """``median_ms``, ``q1_ms``, ``q3_ms``, ``iqr_ms`` and ``min_ms`` of per-round times."""
    q1, median, q3 = quartiles(times_ms)
    return {
        "median_ms": median,
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "min_ms": min(times_ms),
    }


def paired_ratio_median(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]`` (same round, same load)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=False))


def fmt_ms(value: float | None) -> str:
    """Milliseconds with four significant digits or so (``—`` for ``None``)."""
    if value is None:
        return "—"
    return f"{value:.1f}" if value >= 100 else f"{value:.2f}" if value >= 10 else f"{value:.3f}"


def library_version(name: str) -> str | None:
    """Installed version of ``name``, or ``None`` when it is not installed (nothing imported)."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def import_quietly(module: str) -> Any:
    """Import a third-party module with its import-time warnings silenced.

    geoopt and posteriors warn when imported (torch.jit.script deprecation, tensordict
    FutureWarnings); they are not ours to fix, and pytest turns warnings into errors.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def machine_facts(load_start: str | None = None) -> dict[str, Any]:
    """Date, versions, thread count, CPU and load averages, for a report's header.

    Args:
        load_start: the load average taken when the measurement started
            (:func:`torchvalley.bench.machine.load_average`); ``load_end`` is taken now.
    """
    load_now = load_average()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_start": load_now if load_start is None else load_start,
        "load_end": load_now,
    }


def machine_lines(facts: Mapping[str, Any]) -> list[str]:
    """The three markdown header lines of :func:`machine_facts`."""
    return [
        f"- date: {facts['date']}",
        f"- torch {facts['torch']} (CPU capability {facts['cpu_capability']}), "
        f"{facts['threads']} intra-op threads; Python {facts['python']}",
        f"- CPU: {facts['cpu_model']} ({facts['logical_cpus']} logical CPUs); "
        f"load average at start {facts['load_start']}, at end {facts['load_end']}",
    ]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (``None``: unchanged), then restore."""
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.set_num_threads(before)


def write_outputs(
    report: str,
    payload: Mapping[str, Any] | None,
    out: Path | None,
    json_path: Path | None,
    *,
    echo: bool = True,
) -> None:
    """Print the markdown ``report``; write it to ``out`` and ``payload`` as JSON to ``json_path``.

    Each file is written to a temporary name next to it and renamed, so a reader never sees half
    a report.
    """
    if echo:
        print(report, end="")
    if out is not None:
        _write_atomically(Path(out), report)
    if json_path is not None and payload is not None:
        _write_atomically(Path(json_path), json.dumps(payload, indent=2) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)
