"""Reliability diagrams for the UQ benchmark's classification tasks (torchvalley.bench.uq).

Reads the tuned configuration of every method from the benchmark's JSON files (``--results``,
one task; a later file's methods replace an earlier one's, e.g. a rerun of one method), refits
each method once on the first seed (same budget ``--scale``) and plots, per method, the accuracy
against the mean confidence in 15 equal-width confidence bins (the bins of the ECE), with the
bin counts as bar widths' shading. Writes ``<out>/uq_reliability_<task>.png``.

    python benchmarks/uq_reliability.py --results runs/uq/digits_ood.json \
        runs/uq_dims_cls/digits_ood.json --scale 0.5 --out docs/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from torchvalley.bench import uq

BINS = 15


def reliability(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, list[float]]:
    """Per bin ``(k/B, (k+1)/B]``: count, mean confidence and accuracy (NaN when empty)."""
    probs = probs.double()
    confidence, predicted = probs.max(-1)
    correct = (predicted == targets).double()
    edges = torch.linspace(0.0, 1.0, BINS + 1, dtype=torch.float64)[1:-1]
    bins = torch.bucketize(confidence, edges, right=False)
    count = torch.bincount(bins, minlength=BINS).double()
    conf = torch.bincount(bins, weights=confidence, minlength=BINS) / count
    acc = torch.bincount(bins, weights=correct, minlength=BINS) / count
    return {"count": count.tolist(), "confidence": conf.tolist(), "accuracy": acc.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", type=Path, nargs="+", required=True, help="one task's benchmark JSON files"
    )
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = args.results[0].stem  # the benchmark writes <out>/<task>.json
    methods = {}
    for path in args.results:
        if path.stem != task:
            raise ValueError(f"Invalid --results: {path} is not a {task} file")
        methods.update(json.loads(path.read_text())["results"])
    data = uq.load_uq_data(task, args.seed)
    curves = {}
    for method, entry in methods.items():
        prediction = uq.fit_predict(method, data, args.seed, entry["config"], scale=args.scale)
        curves[method] = reliability(prediction.sets["test"], data.test[1])
        print(task, method, "done", flush=True)
    columns = 4
    rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    centres = [(k + 0.5) / BINS for k in range(BINS)]
    for axis, (method, curve) in zip(axes.flat, curves.items(), strict=False):
        total = sum(curve["count"])
        accuracy = [0.0 if a != a else a for a in curve["accuracy"]]
        shades = [c / total for c in curve["count"]]
        axis.bar(centres, accuracy, width=1 / BINS, edgecolor="black", color="tab:blue", alpha=0.7)
        axis.plot([0, 1], [0, 1], "k--", linewidth=1)
        for x, share in zip(centres, shades, strict=True):
            if share > 0:
                axis.text(x, 0.02, f"{100 * share:.0f}", ha="center", fontsize=5, rotation=90)
        axis.set_title(method, fontsize=9)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence", fontsize=8)
        axis.set_ylabel("accuracy", fontsize=8)
    for axis in list(axes.flat)[len(curves) :]:
        axis.axis("off")
    figure.suptitle(f"{task}: reliability (test, seed {args.seed}; numbers: % of inputs per bin)")
    figure.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"uq_reliability_{task}.png"
    figure.savefig(path, dpi=110)
    (args.out / f"uq_reliability_{task}.json").write_text(json.dumps(curves, indent=1))
    print(path)


if __name__ == "__main__":
    main()
