"""Relaxed quantization vs the quantization-aware training people use: accuracy, time, memory.

Three parts (``--part``):

* ``accuracy``: the harness's quantization suite
  (:func:`torchvalley.bench.quant_study.run_quant_study`, what ``torchvalley quant`` runs):
  float, post-training rounding, LSQ-style straight-through QAT, torch.ao fake-quantize QAT,
  brevitas QAT (where brevitas is installed), RQ and RQ-ST at weights/activations 8/8, 4/4,
  3/3, 2/2, into a results store (several processes may share one store: runs are claimed
  atomically), then ``quantization.md`` / ``.json`` / accuracy-vs-bits plots, plus Welch
  t-tests against float, LSQ and brevitas per bit width.
* ``table``: the same table, plots and tests from the finished runs already in the store.
* ``timing``: one training step (forward, backward, Adam) of the quantized models vs the float
  model, rows interleaved round-robin (``benchmarks/_harness.py``), median over rounds.
* ``memory``: bytes the autograd graph keeps for backward (``saved_tensors_hooks``, storages
  counted once) in one training forward of the quantized CNN at 8 bits, RQ with the local grid
  (K = 3) vs the full 256-point grid, and one step's time for each.

Examples::

    python benchmarks/quantization_study.py --part accuracy --task mnist1d_cnn --epochs 6 \\
        --seeds 0 1 2 3 4 --store /tmp/q.db --out docs/figures/quantization
    python benchmarks/quantization_study.py --part timing --task mnist1d_cnn
    python benchmarks/quantization_study.py --part memory
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from _harness import TimedRow, machine_facts, machine_lines, measure_round_robin, torch_threads
from torchvalley.bench.machine import load_average
from torchvalley.bench.names import QUANT_BITS, QUANT_METHODS
from torchvalley.bench.tasks import get_task


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t statistic and two-sided p-value (scipy)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def part_accuracy(args: argparse.Namespace) -> None:
    from torchvalley.bench.quant_study import run_quant_study
    from torchvalley.bench.store import Store

    with Store(args.store) as store:
        study = run_quant_study(
            [args.task],
            args.optimizer,
            args.seeds,
            args.out,
            store=store,
            methods=args.methods,
            bits=args.bits,
            epochs=args.epochs,
            progress=False,
        )
    _write_welch(args, study.table, study.cells[args.task])


def part_table(args: argparse.Namespace) -> None:
    """The table, plot and tests from the finished runs in the store (nothing is trained)."""
    from torchvalley.bench.quant_study import _cells, _markdown, _plots
    from torchvalley.bench.store import Store

    with Store(args.store) as store:
        cells = _cells(store, [args.task], args.methods, args.bits)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = _markdown(cells, [args.task], args.methods, args.bits, args.optimizer, args.epochs)
    for path in _plots(cells, [args.task], args.methods, args.bits, out):
        table += f"\n![{path.stem}]({path.name})\n"
    (out / "quantization.md").write_text(table)
    (out / "quantization.json").write_text(json.dumps({"tasks": cells}, indent=2) + "\n")
    _write_welch(args, table, cells[args.task])


def _write_welch(args: argparse.Namespace, table: str, cells: dict) -> None:
    lines = [table, "", "Welch t-tests of the final test metric (method minus reference):", ""]
    lines += [
        "| bits | method | reference | n vs n | diff (mean) | t | p |",
        "|---|---|---|---|---|---|---|",
    ]
    pairs = [(m, "float") for m in ("rq", "rq_st", "lsq", "torchao", "brevitas", "round")]
    pairs += [(m, "lsq") for m in ("rq", "rq_st", "torchao", "brevitas", "round")]
    pairs += [(m, "brevitas") for m in ("rq", "rq_st")]
    for bits in args.bits:
        for method, reference in pairs:
            if method not in cells or reference not in cells:
                continue
            a, b = cells[method][bits]["values"], cells[reference][bits]["values"]
            if not a or not b:
                continue
            t, p = _welch(a, b)
            diff = statistics.mean(a) - statistics.mean(b)
            lines.append(
                f"| {bits}/{bits} | {method} | {reference} | {len(a)} vs {len(b)} | {diff:+.4f} "
                f"| {t:.2f} | {p:.3g} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out, f"welch_{args.task}.md").write_text(text)


class _StepRow(TimedRow):
    def __init__(self, label: str, model: torch.nn.Module, inputs, targets) -> None:
        super().__init__()
        self.label = label
        self.model = model.train()
        self.inputs, self.targets = inputs, targets
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(self.model(self.inputs), self.targets)
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - start


def _quantized(task, method: str, bits: int, **options) -> torch.nn.Module:
    from torchvalley.quant import quantize_model

    model = task.model(0)
    if method == "float":
        return model
    return quantize_model(
        model, bits, method=method, first_layer_bits=bits, last_layer_bits=bits, **options
    )


def part_timing(args: argparse.Namespace) -> None:
    task = get_task(args.task)
    inputs, targets = task.data().train
    inputs, targets = inputs[: task.batch_size], targets[: task.batch_size]
    load = load_average()
    rows = []
    with torch_threads(1):
        for method in ("float", "lsq", "torchao", "rq", "rq_st"):
            for bits in (8, 2) if method != "float" else (8,):
                label = "float" if method == "float" else f"{method} {bits}/{bits}"
                rows.append(_StepRow(label, _quantized(task, method, bits), inputs, targets))
        measure_round_robin(rows, warmup=3, repeats=args.repeats, steps=args.steps)
    float_ms = statistics.median(rows[0].times_ms)
    lsq = {
        row.label.split()[1]: statistics.median(row.times_ms)
        for row in rows
        if row.label.startswith("lsq")
    }
    lines = [
        f"# Training step time, {args.task} (batch {task.batch_size}), 1 thread",
        "",
        *machine_lines(machine_facts(load)),
        "",
        f"Median over {args.repeats} interleaved rounds of {args.steps} steps (Adam, lr 1e-3).",
        "",
        "| model | ms/step | x float | x LSQ (same bits) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        median = statistics.median(row.times_ms)
        bits = row.label.split()[1] if " " in row.label else None
        versus_lsq = f"{median / lsq[bits]:.2f}" if bits in lsq else "-"
        lines.append(f"| {row.label} | {median:.2f} | {median / float_ms:.2f} | {versus_lsq} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, f"timing_{args.task}.md").write_text(text)


def _saved_bytes(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward in one forward."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(inputs).sum()
    return sum(seen.values())


def part_memory(args: argparse.Namespace) -> None:
    task = get_task(args.task)
    inputs = task.data().train[0][: task.batch_size]
    targets = task.data().train[1][: task.batch_size]
    load = load_average()
    results = {}
    with torch_threads(1):
        models = {
            "float": _quantized(task, "float", 8),
            "lsq 8/8": _quantized(task, "lsq", 8),
            "rq 8/8, local grid K=3": _quantized(task, "rq", 8),
            "rq 8/8, full grid (256)": _quantized(task, "rq", 8, local_cells=None),
        }
        for label, model in models.items():
            model.train()
            results[label] = {"saved_MiB": _saved_bytes(model, inputs) / 2**20}
        rows = [_StepRow(label, model, inputs, targets) for label, model in models.items()]
        measure_round_robin(rows, warmup=1, repeats=args.repeats, steps=max(1, args.steps // 4))
    for row in rows:
        results[row.label]["ms_per_step"] = statistics.median(row.times_ms)
    lines = [
        f"# Memory of the relaxation at 8 bits, {args.task} (batch {task.batch_size})",
        "",
        *machine_lines(machine_facts(load)),
        "",
        "| model | saved for backward (MiB) | ms/step (median) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {label} | {value['saved_MiB']:.1f} | {value['ms_per_step']:.1f} |"
        for label, value in results.items()
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, f"memory_{args.task}.md").write_text(text)
        Path(args.out, f"memory_{args.task}.json").write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("accuracy", "table", "timing", "memory"), required=True)
    parser.add_argument("--task", default="mnist1d_cnn")
    parser.add_argument("--methods", nargs="+", choices=QUANT_METHODS, default=list(QUANT_METHODS))
    parser.add_argument("--bits", nargs="+", type=int, default=list(QUANT_BITS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--optimizer", default="adam:lr=0.001")
    parser.add_argument("--store", default="results/quantization.db")
    parser.add_argument("--out", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.part in ("accuracy", "table"):
        if args.out is None:
            parser.error(f"--part {args.part} needs --out")
        (part_accuracy if args.part == "accuracy" else part_table)(args)
    elif args.part == "timing":
        part_timing(args)
    else:
        part_memory(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
