"""The accuracy table of docs/results/sam_variants.md from the stores of sam_variants_accuracy.sh.

Final test accuracy and train loss per spec (mean ± sample std over seeds), the difference to
SGD and to SAM paired by seed (same initial weights and data order) with a paired t-test.
Usage: python benchmarks/sam_variants_table.py results/sam_variants.db [results/...db ...]
"""

from __future__ import annotations

import sqlite3
import statistics
import sys

from scipy import stats


def _load(paths: list[str]) -> dict[str, dict[int, tuple[float, float]]]:
    found: dict[str, dict[int, tuple[float, float]]] = {}
    for path in paths:
        rows = sqlite3.connect(path).execute(
            "select spec_label, seed, test_metric, train_loss from runs where status='finished'"
        )
        for spec, seed, acc, loss in rows:
            found.setdefault(spec, {})[seed] = (100 * acc, loss)
    return found


def _paired(a: dict, b: dict) -> str:
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return "— | —"
    diff = [a[s][0] - b[s][0] for s in seeds]
    if all(d == 0 for d in diff):
        return "+0.00 ± 0.00 | —"
    p = stats.ttest_rel([a[s][0] for s in seeds], [b[s][0] for s in seeds]).pvalue
    return f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff):.2f} | {p:.2f}"


def main(paths: list[str]) -> None:
    runs = _load(paths)
    sgd = next((v for k, v in runs.items() if k.startswith("sgd:")), {})
    sam = next((v for k, v in runs.items() if k.startswith("sam:") and "centraliz" not in k), {})
    print(
        "| spec | seeds | final test acc. (%) | final train loss | Δ vs SGD (points) | p | "
        "Δ vs SAM (points) | p |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for spec, by_seed in runs.items():
        acc = [v[0] for v in by_seed.values()]
        loss = [v[1] for v in by_seed.values()]
        sd = statistics.stdev(acc) if len(acc) > 1 else float("nan")
        lsd = statistics.stdev(loss) if len(loss) > 1 else float("nan")
        print(
            f"| `{spec}` | {len(acc)} | {statistics.mean(acc):.2f} ± {sd:.2f} | "
            f"{statistics.mean(loss):.4f} ± {lsd:.4f} | {_paired(by_seed, sgd)} | "
            f"{_paired(by_seed, sam)} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
