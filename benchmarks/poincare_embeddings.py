"""Riemannian optimizers on Poincaré embeddings of a random tree (Nickel & Kiela 2017).

Runs :func:`train_poincare` (defined here) for every optimizer × seed on the
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
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchvalley.bench.poincare import (
    EdgeLike,
    NegativeSampler,
    PoincareEmbedding,
    _as_edges,
    _derived_seed,
    _n_nodes,
    poincare_loss,
    random_tree,
    reconstruction_metrics,
    transitive_closure,
)
from torchvalley.bench.specs import OptimizerSpec
from torchvalley.registry import create_optimizer, get_optimizer_entry

DEFAULT_OPTIMIZERS = ("rsgd", "radam", "ramsgrad", "radagrad")
DEFAULT_LR = {"rsgd": 0.3, "radam": 0.01, "ramsgrad": 0.01, "radagrad": 0.1}
#: the learning rate of an optimizer missing from DEFAULT_LR
FALLBACK_LR = 0.01
#: settings of ``--smoke`` (a 60-node tree, 4 epochs; one seed unless ``--seeds`` is given)
SMOKE = {"nodes": 60, "epochs": 4, "burnin_epochs": 1, "negatives": 5, "eval_every": 2}


# --------------------------------------------------------------------------------------------
# Training (Nickel & Kiela's procedure; the harness task is a fixed-negatives simplification)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PoincareResult:
    """The outcome of :func:`train_poincare`.

    Attributes:
        optimizer: registry name (or the factory's name).
        seed: the run's seed.
        losses: mean training loss of each epoch (``losses[i]`` is epoch ``i + 1``).
        eval_epochs: the epochs at which the reconstruction was evaluated (0: initial model).
        mean_ranks, maps: the reconstruction metrics at ``eval_epochs``.
        train_time_s: time spent training (evaluation excluded).
        wall_time_s: total time, evaluation included.
        diverged: the loss became non-finite (training stopped there).
        weights: the final embedding (float, CPU), shape ``(n_nodes, dim)``.
        config: the settings of the run.
    """

    optimizer: str
    seed: int
    losses: list[float] = dataclasses.field(default_factory=list)
    eval_epochs: list[int] = dataclasses.field(default_factory=list)
    mean_ranks: list[float] = dataclasses.field(default_factory=list)
    maps: list[float] = dataclasses.field(default_factory=list)
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    diverged: bool = False
    weights: Tensor | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """The last epoch's mean loss (NaN without epochs)."""
        return self.losses[-1] if self.losses else math.nan

    @property
    def final_mean_rank(self) -> float:
        """The last evaluated mean rank (NaN if never evaluated)."""
        return self.mean_ranks[-1] if self.mean_ranks else math.nan

    @property
    def final_map(self) -> float:
        """The last evaluated MAP (NaN if never evaluated)."""
        return self.maps[-1] if self.maps else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the weights)."""
        out = dataclasses.asdict(dataclasses.replace(self, weights=None))
        out.pop("weights")
        return out


OptimizerFactory = Callable[..., torch.optim.Optimizer]


def train_poincare(
    edges: EdgeLike,
    n_nodes: int | None = None,
    *,
    optimizer: str | OptimizerFactory = "radam",
    optimizer_kwargs: Mapping[str, Any] | None = None,
    dim: int = 5,
    epochs: int = 50,
    negatives: int = 10,
    batch_size: int = 10,
    burnin_epochs: int = 10,
    burnin_lr_factor: float = 0.1,
    init_range: float = 1e-3,
    seed: int = 0,
    eval_every: int | None = None,
    dtype: torch.dtype = torch.float64,
    c: float = 1.0,
    callback: Callable[[int, Mapping[str, float]], None] | None = None,
) -> PoincareResult:
    """Train a Poincaré embedding of a closure with Nickel & Kiela's procedure.

    * The model is :class:`PoincareEmbedding` (``dim``, ``init_range``, ``dtype``), initialised
      from a seed derived from ``seed``.
    * Every epoch visits all pairs ``(u, v)`` of ``edges`` once, shuffled by a private
      generator, in batches of ``batch_size`` (the last one may be smaller); each pair gets
      ``negatives`` fresh negatives from a :class:`NegativeSampler` (re-sampled every epoch).
    * Burn-in: during the first ``burnin_epochs`` epochs every param group's learning rate is
      multiplied by ``burnin_lr_factor`` and negatives are drawn ∝ ``degree^0.75``; afterwards
      the learning rates are restored and negatives are uniform.
    * The loss is :func:`poincare_loss` (``cross_entropy(−d, 0)``); an epoch's loss is the mean
      of its batch losses (taken before each step).
    * With ``eval_every = k`` the reconstruction metrics are computed for the initial model, at
      every ``k``-th epoch and at the end; with ``None`` only at the end.
    * A non-finite loss stops training (``diverged = True``).

    The optimizer is ``create_optimizer(optimizer, model.parameters(), model=model,
    **optimizer_kwargs)`` and every step is ``optimizer.step(closure)``;
    it must keep the points in the ball (a Riemannian optimizer, see the module docstring).
    A callable instead of a name is called as ``optimizer(params, **optimizer_kwargs)``, which
    allows an optimizer that is not in the registry.

    Args:
        edges: closure pairs ``(u, v)``, shape ``(E, 2)``.
        n_nodes: number of nodes (default ``1 + max index``).
        optimizer: registry name, or an optimizer factory.
        optimizer_kwargs: hyperparameters (``lr``, ``betas``, ...).
        dim: dimension of the ball.
        epochs: epochs in total (burn-in included).
        negatives: negatives per positive pair (``K``).
        batch_size: positive pairs per step.
        burnin_epochs: epochs of burn-in.
        burnin_lr_factor: learning-rate multiplier during the burn-in.
        init_range: half-width of the uniform initialisation.
        seed: seed of the initialisation, negative sampling and shuffling (three derived,
            independent streams; the global RNGs are not used).
        eval_every: evaluation period in epochs (see above).
        dtype: embedding dtype (float64 recommended).
        c: negated curvature.
        callback: called after every epoch as ``callback(epoch, values)`` with ``values``
            holding ``"loss"`` and, at evaluation epochs, ``"mean_rank"`` and ``"map"``
            (also for epoch 0 when ``eval_every`` is set, without ``"loss"``).

    Returns:
        A :class:`PoincareResult`.
    """
    wall_start = time.perf_counter()
    edge_tensor = _as_edges(edges, n_nodes)
    n_nodes = _n_nodes(edge_tensor, n_nodes)
    if epochs < 0 or batch_size < 1 or burnin_epochs < 0:
        raise ValueError("need epochs >= 0, batch_size >= 1 and burnin_epochs >= 0")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer or None, got {eval_every}")
    hyperparameters = dict(optimizer_kwargs or {})
    model = PoincareEmbedding(
        n_nodes, dim, init_range=init_range, seed=_derived_seed("init", seed), dtype=dtype, c=c
    )
    if isinstance(optimizer, str):
        name = optimizer
        # the registry passes model= on only where the entry accepts it (SAM's BatchNorm, ...)
        opt = create_optimizer(optimizer, model.parameters(), model=model, **hyperparameters)
    else:
        name = getattr(optimizer, "__name__", type(optimizer).__name__)
        opt = optimizer(model.parameters(), **hyperparameters)
    sampler = NegativeSampler(
        edge_tensor, n_nodes, negatives, seed=_derived_seed("negatives", seed)
    )
    shuffler = torch.Generator().manual_seed(_derived_seed("shuffle", seed))
    base_lrs = [group["lr"] for group in opt.param_groups]
    targets = torch.zeros(batch_size, dtype=torch.int64)
    result = PoincareResult(
        optimizer=name,
        seed=int(seed),
        config={
            "optimizer_kwargs": dict(hyperparameters),
            "n_nodes": n_nodes,
            "n_edges": edge_tensor.shape[0],
            "dim": dim,
            "epochs": epochs,
            "negatives": negatives,
            "batch_size": batch_size,
            "burnin_epochs": burnin_epochs,
            "burnin_lr_factor": burnin_lr_factor,
            "init_range": init_range,
            "dtype": str(dtype),
            "c": c,
        },
    )

    def evaluate(epoch: int) -> dict[str, float]:
        metrics = reconstruction_metrics(model.weight, edge_tensor, model.manifold)
        result.eval_epochs.append(epoch)
        result.mean_ranks.append(metrics["mean_rank"])
        result.maps.append(metrics["map"])
        return {"mean_rank": metrics["mean_rank"], "map": metrics["map"]}

    if eval_every is not None:
        values = evaluate(0)
        if callback is not None:
            callback(0, values)
    model.train()
    try:
        for epoch in range(1, epochs + 1):
            epoch_start = time.perf_counter()
            burnin = epoch <= burnin_epochs
            factor = burnin_lr_factor if burnin else 1.0
            for group, lr in zip(opt.param_groups, base_lrs, strict=True):
                group["lr"] = lr * factor
            permutation = torch.randperm(edge_tensor.shape[0], generator=shuffler)
            loss_sum = 0.0
            steps = 0
            for start in range(0, permutation.numel(), batch_size):
                pairs = edge_tensor[permutation[start : start + batch_size]]
                idx = sampler.batch(pairs, weighted=burnin)
                batch_targets = targets[: idx.shape[0]]
                first: list[float] = []

                def closure(idx: Tensor = idx, t: Tensor = batch_targets, first=first) -> Tensor:
                    opt.zero_grad(set_to_none=True)
                    loss = poincare_loss(model(idx), t)
                    loss.backward()
                    if not first:
                        first.append(float(loss.detach()))
                    return loss

                opt.step(closure)
                loss_sum += first[0]
                steps += 1
                if not math.isfinite(first[0]):
                    break
            result.train_time_s += time.perf_counter() - epoch_start
            epoch_loss = loss_sum / max(steps, 1)
            result.losses.append(epoch_loss)
            values = {"loss": epoch_loss}
            if not math.isfinite(epoch_loss):
                result.diverged = True
                if callback is not None:
                    callback(epoch, values)
                break
            if epoch == epochs or (eval_every is not None and epoch % eval_every == 0):
                values.update(evaluate(epoch))
            if callback is not None:
                callback(epoch, values)
    finally:
        for group, lr in zip(opt.param_groups, base_lrs, strict=True):
            group["lr"] = lr
    result.weights = model.weight.detach().clone()
    result.wall_time_s = time.perf_counter() - wall_start
    return result


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
