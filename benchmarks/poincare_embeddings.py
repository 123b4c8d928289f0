"""Riemannian optimizers on Poincaré embeddings of a random tree (Nickel & Kiela 2017).

Runs :func:`torchvalley.bench.poincare.train_poincare` for every optimizer × seed on the
transitive closure of ``random_tree(--nodes, seed=--data-seed)``, prints a markdown table (final
loss, mean rank and MAP of the reconstruction as mean ± std over seeds, ddof=1, and the mean
wall time of a run) and optionally writes the per-run results as JSON and loss / MAP-vs-epoch
curves as a PNG (mean over seeds, ±1 std band).

The set-up follows Bécigneul & Ganea (ICLR 2019), who compare RSGD, RAdam, RAMSGrad and
RAdagrad on WordNet in a 5-dimensional Poincaré ball, and the reference code of Nickel & Kiela
(facebookresearch/poincare-embeddings: RSGD lr 0.3, batch 10, 50 negatives, burn-in with a
reduced learning rate and ``degree^0.75`` negatives). The default learning rates are starting
points, not tuned values: RSGD 0.3 (the reference code's mammal setting), RAdam/RAMSGrad 0.01,
RAdagrad 0.1; pass ``--lr NAME=VALUE`` to change them. Other hyperparameters are the registry
defaults.

Usage::

    python benchmarks/poincare_embeddings.py --optimizers rsgd radam ramsgrad radagrad \\
        --seeds 0 1 2 --epochs 200 --nodes 1000 --dim 5 --lr rsgd=0.3 radam=0.01 \\
        --out results/poincare.json --plot docs/figures/poincare_tree.png
    python benchmarks/poincare_embeddings.py --optimizers rsgd "radam:lazy=True,lr=0.03"
    python benchmarks/poincare_embeddings.py --smoke   # a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from torchvalley.bench.poincare import (
    PoincareResult,
    random_tree,
    train_poincare,
    transitive_closure,
)
from torchvalley.bench.specs import OptimizerSpec
from torchvalley.registry import get_optimizer_entry

DEFAULT_OPTIMIZERS = ("rsgd", "radam", "ramsgrad", "radagrad")
DEFAULT_LR = {"rsgd": 0.3, "radam": 0.01, "ramsgrad": 0.01, "radagrad": 0.1}
#: the learning rate of an optimizer missing from DEFAULT_LR
FALLBACK_LR = 0.01
#: settings of ``--smoke`` (a 60-node tree, 4 epochs; one seed unless ``--seeds`` is given)
SMOKE = {"nodes": 60, "epochs": 4, "burnin_epochs": 1, "negatives": 5, "eval_every": 2}


def _parse_lrs(items: Sequence[str]) -> dict[str, float]:
    lrs: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--lr expects NAME=VALUE, got {item!r}")
        lrs[name.strip().lower()] = float(value)
    return lrs


def _stat(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return statistics.fmean(finite), std


def summary_table(results: Mapping[str, Sequence[PoincareResult]]) -> str:
    """Markdown table: one row per optimizer, mean ± std over its seeds."""
    lines = [
        "| optimizer | lr | seeds | final loss | mean rank | MAP | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        loss = _stat([r.final_loss for r in runs])
        rank = _stat([r.final_mean_rank for r in runs])
        ap = _stat([r.final_map for r in runs])
        wall = statistics.fmean(r.wall_time_s for r in runs)
        lr = runs[0].config["optimizer_kwargs"].get("lr", "")
        diverged = sum(r.diverged for r in runs)
        seeds = f"{len(runs)}" + (f" ({diverged} diverged)" if diverged else "")
        lines.append(
            f"| {name} | {lr:g} | {seeds} | {loss[0]:.4f} ± {loss[1]:.4f} | "
            f"{rank[0]:.2f} ± {rank[1]:.2f} | {ap[0]:.4f} ± {ap[1]:.4f} | {wall:.1f} |"
        )
    return "\n".join(lines)


def _mean_curve(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    length = min(len(c) for c in curves)
    means, stds = [], []
    for i in range(length):
        mean, std = _stat([c[i] for c in curves])
        means.append(mean)
        stds.append(std)
    return means, stds


def plot_curves(results: Mapping[str, Sequence[PoincareResult]], path: Path, title: str) -> None:
    """Loss and MAP against the epoch, mean over seeds with a ±1 std band (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, map_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in results.items():
        means, stds = _mean_curve([r.losses for r in runs])
        epochs = list(range(1, len(means) + 1))
        (line,) = loss_axes.plot(epochs, means, label=name)
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        loss_axes.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        means, stds = _mean_curve([r.maps for r in runs])
        eval_epochs = runs[0].eval_epochs[: len(means)]
        map_axes.plot(eval_epochs, means, marker="o", markersize=3, label=name)
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        map_axes.fill_between(eval_epochs, low, high, color=line.get_color(), alpha=0.2)
    loss_axes.set(xlabel="epoch", ylabel="training loss", yscale="log")
    map_axes.set(xlabel="epoch", ylabel="reconstruction MAP", ylim=(0, 1.02))
    for axes in (loss_axes, map_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid, print the table, write the JSON and the plot if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS))
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 (--smoke: 0)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=1000, help="nodes of the random tree")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the random tree")
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--burnin-epochs", type=int, default=10)
    parser.add_argument("--burnin-lr-factor", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument(
        "--lr", nargs="+", default=[], metavar="NAME=VALUE", help="learning rate per optimizer"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the per-run results here (JSON)")
    parser.add_argument("--plot", type=Path, help="write loss/MAP curves here (PNG)")
    parser.add_argument("--smoke", action="store_true", help="a tiny setting that runs in seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.seeds is None:
        args.seeds = [0] if args.smoke else [0, 1, 2]
    try:
        lrs = {**DEFAULT_LR, **_parse_lrs(args.lr)}
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    # Each --optimizers item is a registry name or a spec "name:key=value,..." (e.g.
    # "radam:lazy=True,lr=0.03"); a spec's lr overrides --lr.
    specs: dict[str, tuple[str, dict[str, Any]]] = {}
    for text in args.optimizers:
        try:
            spec = OptimizerSpec.parse(text)
            entry = get_optimizer_entry(spec.name)
        except ValueError as error:
            parser.error(str(error))
        kwargs = {"lr": lrs.get(spec.name, FALLBACK_LR), **spec.hyperparameters}
        specs[text if ":" in text else spec.name] = (spec.name, kwargs)
    for name, _ in specs.values():
        entry = get_optimizer_entry(name)
        if not entry.capabilities.manifold_aware:
            print(
                f"warning: {name!r} does not honour ManifoldParameter; points may leave the ball",
                file=sys.stderr,
            )

    closure = transitive_closure(random_tree(args.nodes, seed=args.data_seed))
    print(
        f"tree: {args.nodes} nodes (data seed {args.data_seed}), closure {closure.shape[0]} pairs;"
        f" dim {args.dim}, {args.negatives} negatives, batch {args.batch_size}, "
        f"{args.epochs} epochs ({args.burnin_epochs} burn-in at lr × {args.burnin_lr_factor})",
        file=sys.stderr,
    )
    results: dict[str, list[PoincareResult]] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for label, (name, kwargs) in specs.items():
            for seed in args.seeds:
                result = train_poincare(
                    closure,
                    args.nodes,
                    optimizer=name,
                    optimizer_kwargs=dict(kwargs),
                    dim=args.dim,
                    epochs=args.epochs,
                    negatives=args.negatives,
                    batch_size=args.batch_size,
                    burnin_epochs=args.burnin_epochs,
                    burnin_lr_factor=args.burnin_lr_factor,
                    seed=seed,
                    eval_every=args.eval_every,
                )
                print(
                    f"{label} seed={seed}: loss {result.final_loss:.4f}, mean rank "
                    f"{result.final_mean_rank:.2f}, MAP {result.final_map:.4f}, "
                    f"{result.wall_time_s:.1f} s",
                    file=sys.stderr,
                )
                results.setdefault(label, []).append(result)
    finally:
        torch.set_num_threads(previous_threads)

    print(summary_table(results))
    settings: dict[str, Any] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": settings,
            "closure_pairs": int(closure.shape[0]),
            "runs": [r.to_dict() for runs in results.values() for r in runs],
        }
        args.out.write_text(json.dumps(payload, indent=1, default=str))
    if args.plot is not None:
        title = (
            f"Poincaré embedding of a {args.nodes}-node tree (dim {args.dim}, "
            f"{len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''})"
        )
        plot_curves(results, args.plot, title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
