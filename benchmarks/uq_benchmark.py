"""The UQ benchmark: MAP, deep ensemble, MC dropout, Laplace (laplace-torch), SGLD, BAOAB and
DiMS on classification with OOD inputs and regression with a gap (torchvalley.bench.uq).

Each method is tuned over its grid (the same number of configurations for all) on the first
seed's validation NLL, then run over the seeds on the test split. Writes a JSON file per task and
a markdown table (mean ± std over seeds; Welch's t-test of DiMS against each other method on
test NLL and, for classification, OOD AUROC).

    python benchmarks/uq_benchmark.py --tasks digits_ood,gap1d --seeds 5 --scale 0.5 --out runs/uq
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from torchvalley.bench import uq


def welch_p(a: list[float], b: list[float]) -> float:
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def table(task: str, results: dict) -> str:
    methods = list(results)
    keys = list(results[methods[0]]["runs"][0])
    lines = [
        f"### {task}",
        "",
        "| method | config | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for method in methods:
        runs = results[method]["runs"]
        cells = []
        for key in keys:
            values = [r[key] for r in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {sd:.4f}")
        config = ", ".join(f"{k}={v:g}" for k, v in (results[method]["config"] or {}).items())
        lines.append(f"| {method} | {config} | " + " | ".join(cells) + " |")
    if "dims" in results:
        lines.append("")
        dims = results["dims"]["runs"]
        for key in ("nll", "ood_auroc"):
            if key not in keys:
                continue
            tests = []
            for method in methods:
                if method == "dims":
                    continue
                other = [r[key] for r in results[method]["runs"]]
                tests.append(f"{method} p={welch_p([r[key] for r in dims], other):.3g}")
            lines.append(f"Welch t-test, DiMS vs each method on {key}: " + "; ".join(tests) + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(uq.TASKS))
    parser.add_argument("--methods", default=",".join(uq.METHODS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies epochs and chains")
    parser.add_argument("--out", type=Path, default=Path("runs/uq"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    for task in args.tasks.split(","):
        start = time.perf_counter()
        results = uq.run_benchmark([task], methods, list(range(args.seeds)), scale=args.scale)
        results = results[task]
        (args.out / f"{task}.json").write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=1)
        )
        text = table(task, results)
        text += f"\n{task}: {time.perf_counter() - start:.0f} s wall, torch {torch.__version__}\n"
        (args.out / f"{task}.md").write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
