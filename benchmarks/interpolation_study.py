"""Linear interpolation from initialization to solution (Vlaar & Frankle, ICML 2022), small scale.

Reproduces, on MNIST-1D (generated offline, canonical data seed 42), the questions of
"What can linear interpolation of neural network loss landscapes tell us?":

* ``--part study``: for each factor (labels true vs shuffled vs true after a random-label
  "adversarial" initialization; initialization scale 0.5x / 1x / 2x; SGD vs Adam at lr 1e-3 and
  1e-2; MLP vs CNN; SGD vs Adam on the CNN) and seed: train, then measure the path
  ``θ_α = (1 − α) θ_init + α θ_final`` at 21 points of ``α ∈ [0, 1]`` (train loss on the first
  1000 training examples, test loss on the 1000 test examples, BatchNorm statistics recomputed on
  the 1000 training examples at every α), its barrier statistics
  (:func:`torchvalley.landscape.path_barrier`), and the layer-wise paths (one layer moves from
  init to final, the others stay at final; :func:`torchvalley.landscape.layerwise_interpolation`).
* ``--part practical``: the paper's suggested use: a different step size for the most sensitive
  layer (largest loss when it alone is reset to its initialization, from ``--part study``), vs
  the uniform step at the same base learning rate (tuned on a validation split first), with the
  least sensitive layer scaled the same way as a control. Welch t-tests on test accuracy.
* ``--part report``: tables (mean ± sample std over seeds), Welch tests between factor levels,
  Spearman correlations of barrier vs final test accuracy / loss (all runs, true-label runs,
  within each factor and within each configuration) and the figures, from the JSON only.

The base configuration is the MLP 40-100-100-10 (``mnist1d_mlp``'s model), SGD (lr 0.05,
momentum 0.9), true labels, PyTorch's default initialization (scale 1), batch 100. Every factor
changes one thing from it; the CNN is ``mnist1d_cnn``'s model (3 conv + BatchNorm + linear).

Examples::

    python benchmarks/interpolation_study.py --part study --seeds 0 1 2 3 4
    python benchmarks/interpolation_study.py --part study --configs adv_init  # add one config
    python benchmarks/interpolation_study.py --part practical --seeds 0 1 2 3 4
    python benchmarks/interpolation_study.py --part report --md /tmp/interp.md

All numbers go to ``--json`` (default ``docs/results/interpolation_study.json``; each part
rewrites only its own key); the figures to ``--figures`` (default ``docs/figures``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from _harness import machine_facts, machine_lines
from torchvalley.bench.machine import load_average
from torchvalley.bench.tasks import get_task
from torchvalley.landscape import layerwise_interpolation, linear_interpolation, path_barrier

ROOT = Path(__file__).resolve().parents[1]

#: each configuration changes one thing from "base"
CONFIGS: dict[str, dict[str, Any]] = {
    "base": {"arch": "mlp", "optimizer": "sgd", "labels": "true", "init_scale": 1.0},
    "shuffled": {"arch": "mlp", "optimizer": "sgd", "labels": "shuffled", "init_scale": 1.0},
    "adv_init": {"arch": "mlp", "optimizer": "sgd", "labels": "adv_init", "init_scale": 1.0},
    "init0.5": {"arch": "mlp", "optimizer": "sgd", "labels": "true", "init_scale": 0.5},
    "init2": {"arch": "mlp", "optimizer": "sgd", "labels": "true", "init_scale": 2.0},
    "adam": {"arch": "mlp", "optimizer": "adam", "labels": "true", "init_scale": 1.0},
    "adam_lr0.01": {
        "arch": "mlp", "optimizer": "adam", "labels": "true", "init_scale": 1.0, "lr": 1e-2
    },
    "cnn": {"arch": "cnn", "optimizer": "sgd", "labels": "true", "init_scale": 1.0},
    "cnn_adam": {"arch": "cnn", "optimizer": "adam", "labels": "true", "init_scale": 1.0},
}  # fmt: skip
#: factor -> (label, config) per level; the first level is the reference of the Welch tests
FACTORS: dict[str, list[tuple[str, str]]] = {
    "labels": [("true", "base"), ("shuffled", "shuffled"), ("random-label init", "adv_init")],
    "init scale": [("1x", "base"), ("0.5x", "init0.5"), ("2x", "init2")],
    "optimizer": [("SGD", "base"), ("Adam", "adam"), ("Adam lr 0.01", "adam_lr0.01")],
    "architecture": [("MLP", "base"), ("CNN", "cnn")],
    "optimizer (CNN)": [("SGD", "cnn"), ("Adam", "cnn_adam")],
}
TASKS = {"mlp": "mnist1d_mlp", "cnn": "mnist1d_cnn"}
#: layer-wise groups: name -> state-key prefixes (a layer with its BatchNorm)
GROUPS = {
    "mlp": {"fc1": ["0"], "fc2": ["2"], "fc3": ["4"]},
    "cnn": {
        "conv1": ["features.0", "features.1"],
        "conv2": ["features.3", "features.4"],
        "conv3": ["features.6", "features.7"],
        "fc": ["classifier"],
    },
}
LR = {"sgd": 0.05, "adam": 1e-3}
BATCH = 100
STEPS = 21
CURVE_EXAMPLES = 1000
#: a rise of the train loss above this (nats) makes a path non-monotonic
MONOTONIC_TOL = 1e-3


# -- training -----------------------------------------------------------------------------------


def _data(labels: str, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple]:
    data = get_task("mnist1d_mlp").data()  # the same MNIST-1D data set for both models
    x, y = data.train
    if labels == "shuffled":  # a fixed random permutation of the training labels per seed
        # ("adv_init" trains on the true labels, from a network first fit to these)
        generator = torch.Generator().manual_seed(1000 + seed)
        y = y[torch.randperm(len(y), generator=generator)]
    return (x, y), data.test


def _model(arch: str, seed: int, init_scale: float) -> torch.nn.Module:
    model = get_task(TASKS[arch]).model(seed)
    with torch.no_grad():
        for parameter in model.parameters():  # every weight and bias (BatchNorm γ, β too)
            parameter.mul_(init_scale)
    return model


def _param_groups(model, arch: str, lr: float, scaled: str | None, factor: float) -> list[dict]:
    if scaled is None:
        return [{"params": list(model.parameters()), "lr": lr}]
    prefixes = GROUPS[arch][scaled]
    inside, outside = [], []
    for name, parameter in model.named_parameters():
        hit = any(name == p or name.startswith(p + ".") for p in prefixes)
        (inside if hit else outside).append(parameter)
    return [{"params": inside, "lr": lr * factor}, {"params": outside, "lr": lr}]


def _train(
    model: torch.nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    optimizer_name: str,
    groups: list[dict],
    epochs: int,
    seed: int,
) -> None:
    loss_fn = torch.nn.functional.cross_entropy
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(groups)
    x, y = train
    generator = torch.Generator().manual_seed(10_000 + seed)  # batch order
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), BATCH):
            index = order[start : start + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()


@torch.no_grad()
def _evaluate(
    model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> tuple[float, float]:
    model.eval()
    outputs = model(data[0])
    loss = float(torch.nn.functional.cross_entropy(outputs, data[1]))
    accuracy = float((outputs.argmax(1) == data[1]).double().mean())
    return loss, accuracy


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(1) == targets).double().mean()


def _barrier(alphas, losses) -> dict[str, float]:
    if not bool(torch.isfinite(torch.as_tensor(losses)).all()):  # a diverged run
        return {"chord_barrier": math.nan, "rise": math.nan, "peak_above_start": math.nan,
                "monotonic": False, "start_loss": math.nan, "end_loss": math.nan}  # fmt: skip
    return {
        k: v for k, v in vars(path_barrier(losses, alphas, tol=MONOTONIC_TOL)).items() if k != "tol"
    }


def run_one(config: str, seed: int, epochs: int) -> dict[str, Any]:
    spec = CONFIGS[config]
    arch = spec["arch"]
    train, test = _data(spec["labels"], seed)
    model = _model(arch, seed, spec["init_scale"])
    if spec["labels"] == "adv_init":  # Vlaar & Frankle's adversarial init: fit random labels
        shuffled, _ = _data("shuffled", seed)
        lr = spec.get("lr", LR[spec["optimizer"]])
        _train(model, shuffled, spec["optimizer"], _param_groups(model, arch, lr, None, 1.0),
               epochs, seed + 500)  # fmt: skip
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    started = time.perf_counter()
    lr = spec.get("lr", LR[spec["optimizer"]])
    groups = _param_groups(model, arch, lr, None, 1.0)
    _train(model, train, spec["optimizer"], groups, epochs, seed)
    train_seconds = time.perf_counter() - started
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss_fn = torch.nn.functional.cross_entropy
    sub = (train[0][:CURVE_EXAMPLES], train[1][:CURVE_EXAMPLES])
    sub_batches = [(sub[0][i : i + 500], sub[1][i : i + 500]) for i in range(0, len(sub[0]), 500)]
    started = time.perf_counter()
    layerwise = layerwise_interpolation(
        model, init, final, loss_fn, sub_batches, groups=GROUPS[arch], steps=STEPS,
        bn_data=sub_batches, metric_fn=_accuracy,
    )  # fmt: skip
    test_path = linear_interpolation(
        model, init, final, loss_fn, test, steps=STEPS, bn_data=sub_batches, metric_fn=_accuracy
    )
    curve_seconds = time.perf_counter() - started
    model.load_state_dict(final)
    test_loss, test_accuracy = _evaluate(model, test)
    train_loss, train_accuracy = _evaluate(model, train)  # BatchNorm: the running statistics
    alphas = layerwise.alphas
    full = layerwise.full
    distance = math.sqrt(
        sum(float(((final[k] - init[k]) ** 2).sum()) for k, _ in model.named_parameters())
    )
    layers = {}
    for name, curve in layerwise.losses.items():
        layers[name] = {
            "train_loss": curve.tolist(),
            "reset_rise": float(curve[0] - curve[-1]),  # loss with this layer at init
            "max_rise": float(curve.max() - curve[-1]),
            "barrier": _barrier(alphas, curve),
        }
    return {
        "config": config,
        "seed": seed,
        "epochs": epochs,
        "alphas": alphas.tolist(),
        "train_curve": full.losses.tolist(),
        "train_accuracy_curve": full.metrics.tolist(),
        "test_curve": test_path.losses.tolist(),
        "test_accuracy_curve": test_path.metrics.tolist(),
        "train_barrier": _barrier(alphas, full.losses),
        "test_barrier": _barrier(alphas, test_path.losses),
        "layers": layers,
        "final": {
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
        },
        "distance": distance,
        "train_seconds": train_seconds,
        "curve_seconds": curve_seconds,
    }


# -- parts --------------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _rounded(value: Any) -> Any:
    """A JSON-ready copy with floats at 6 significant digits (the file stays small)."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _save(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(_rounded(payload), separators=(",", ":")) + "\n")
    partial.replace(path)


def part_study(args: argparse.Namespace) -> None:
    payload = _load(args.json)
    load_start = load_average()
    runs = []
    for config in args.configs:
        epochs = args.epochs
        for seed in args.seeds:
            run = run_one(config, seed, epochs)
            runs.append(run)
            b = run["train_barrier"]
            print(
                f"{config:9s} seed {seed}: test acc {run['final']['test_accuracy']:.3f} "
                f"chord {b['chord_barrier']:.3f} rise {b['rise']:.4f} "
                f"({run['train_seconds']:.1f}+{run['curve_seconds']:.1f} s)",
                flush=True,
            )
    study = payload.get("study", {})
    old = [r for r in study.get("runs", []) if r["config"] not in args.configs]
    invocations = study.get("invocations", [])
    if "command" in study:  # the layout of a single invocation
        invocations = [{"command": study["command"], "machine": study["machine"]}]
    invocations.append(
        {"command": " ".join(["python", *sys.argv]), "machine": machine_facts(load_start)}
    )
    payload["study"] = {"invocations": invocations, "runs": old + runs}
    _save(args.json, payload)


def _sensitivity(study_runs: list[dict], config: str) -> dict[str, float]:
    runs = [r for r in study_runs if r["config"] == config]
    names = list(runs[0]["layers"])
    return {n: statistics.fmean(r["layers"][n]["reset_rise"] for r in runs) for n in names}


def part_practical(args: argparse.Namespace) -> None:
    payload = _load(args.json)
    if "study" not in payload:
        raise SystemExit("run --part study first: the sensitive layer comes from it")
    arch = args.practical_arch
    config = "base" if arch == "mlp" else "cnn"
    sensitivity = _sensitivity(payload["study"]["runs"], config)
    ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)
    sensitive, robust = ranked[0], ranked[-1]
    load_start = load_average()
    # 1. tune the uniform base lr on a validation split (last 800 training examples)
    (x, y), _ = _data("true", 0)
    fit, validation = (x[:3200], y[:3200]), (x[3200:], y[3200:])
    tuning = {}
    for lr in args.lrs:
        scores = []
        for seed in args.tune_seeds:
            model = _model(arch, seed, 1.0)
            _train(model, fit, "sgd", _param_groups(model, arch, lr, None, 1.0), args.epochs, seed)
            scores.append(_evaluate(model, validation)[1])
        tuning[str(lr)] = scores
        print(f"tune {arch} lr {lr}: validation acc {statistics.fmean(scores):.4f}", flush=True)
    base_lr = max(args.lrs, key=lambda lr: statistics.fmean(tuning[str(lr)]))
    # 2. the arms at the tuned base lr, trained on the full training set, tested on the test set
    arms = {"uniform": (None, 1.0)}
    for factor in args.factors:
        arms[f"{sensitive} x{factor:g} (most sensitive)"] = (sensitive, factor)
        arms[f"{robust} x{factor:g} (least sensitive)"] = (robust, factor)
    train, test = _data("true", 0)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    for seed in args.seeds:
        for name, (layer, factor) in arms.items():  # arms interleaved per seed
            model = _model(arch, seed, 1.0)
            groups = _param_groups(model, arch, base_lr, layer, factor)
            _train(model, train, "sgd", groups, args.epochs, seed)
            test_loss, test_accuracy = _evaluate(model, test)
            train_loss, _ = _evaluate(model, train)
            results[name].append(
                {"seed": seed, "test_accuracy": test_accuracy, "test_loss": test_loss,
                 "train_loss": train_loss}
            )  # fmt: skip
            print(f"{arch} {name} seed {seed}: test acc {test_accuracy:.4f}", flush=True)
    practical = payload.setdefault("practical", {})
    practical[arch] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine_facts(load_start),
        "sensitivity": sensitivity,
        "sensitive": sensitive,
        "robust": robust,
        "tuning": tuning,
        "base_lr": base_lr,
        "epochs": args.epochs,
        "arms": results,
    }
    _save(args.json, payload)


# -- report -------------------------------------------------------------------------------------


def _ms(values: list[float], digits: int = 3) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "—"
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.fmean(finite):.{digits}f} ± {std:.{digits}f}"


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy import stats

    if len(a) < 2 or len(b) < 2 or (statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0):
        return math.nan, math.nan
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def _spearman(a: list[float], b: list[float]) -> tuple[float, float]:
    from scipy import stats

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


def _mann_whitney(a: list[float], b: list[float]) -> float:
    from scipy import stats

    if not a or not b:
        return math.nan
    return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def _arch(run: dict) -> str:
    return CONFIGS[run["config"]]["arch"]


def _fmt(value: float, spec: str = ".3g") -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def _report_study(runs: list[dict], lines: list[str]) -> None:
    by_config = {c: [r for r in runs if r["config"] == c] for c in CONFIGS}
    lines += [
        "Per configuration (mean ± sample std over seeds). Train-loss path on the first 1000 "
        "training examples; `chord` = max_α [L(α) − ((1−α)L(0) + αL(1))]; `rise` = "
        "max_{α≤α'} [L(α') − L(α)] (non-monotonicity); `peak−L(0)` = max_α L(α) − L(0); "
        f"`monotonic` = rise ≤ {MONOTONIC_TOL:g} nats (runs monotonic / runs).",
        "",
        "| config | seeds | test acc | test loss | train loss | L(0) | chord (train) | rise (train)"
        " | peak−L(0) (train) | monotonic (train) | chord (test) | rise (test) | rise from α (test)"
        " | peak−L(0) (test) | monotonic (test) | ‖θ_f − θ_0‖ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, rs in by_config.items():
        if not rs:
            continue
        tb = [r["train_barrier"] for r in rs]
        vb = [r["test_barrier"] for r in rs]
        lines.append(
            f"| {config} | {len(rs)} | {_ms([r['final']['test_accuracy'] for r in rs])} "
            f"| {_ms([r['final']['test_loss'] for r in rs])} "
            f"| {_ms([r['final']['train_loss'] for r in rs])} "
            f"| {_ms([b['start_loss'] for b in tb], 2)} "
            f"| {_ms([b['chord_barrier'] for b in tb])} | {_ms([b['rise'] for b in tb], 4)} "
            f"| {_ms([b['peak_above_start'] for b in tb], 4)} "
            f"| {sum(b['monotonic'] for b in tb)}/{len(tb)} "
            f"| {_ms([b['chord_barrier'] for b in vb])} | {_ms([b['rise'] for b in vb], 4)} "
            f"| {_ms([b.get('rise_from', math.nan) for b in vb], 2)} "
            f"| {_ms([b['peak_above_start'] for b in vb], 4)} "
            f"| {sum(b['monotonic'] for b in vb)}/{len(vb)} "
            f"| {_ms([r['distance'] for r in rs], 1)} |"
        )
    lines += [
        "",
        "Welch t-tests between factor levels (level minus reference level; p two-sided):",
        "",
        "| factor | level vs reference | Δ chord (train) | p | Δ rise (train) | p "
        "| Δ test acc | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for factor, levels in FACTORS.items():
        (_, reference), *others = levels
        ref = by_config[reference]
        for label, config in others:
            rs = by_config[config]
            if not rs or not ref:
                continue
            cells = []
            for get in (
                lambda r: r["train_barrier"]["chord_barrier"],
                lambda r: r["train_barrier"]["rise"],
                lambda r: r["final"]["test_accuracy"],
            ):
                a, b = [get(r) for r in rs], [get(r) for r in ref]
                _, p = _welch(a, b)
                cells += [f"{statistics.fmean(a) - statistics.fmean(b):+.4f}", _fmt(p)]
            lines.append(f"| {factor} | {label} vs {levels[0][0]} | " + " | ".join(cells) + " |")
    # layer-wise
    lines += [
        "",
        "Layer-wise interpolation (one layer from init to final, the rest at final; train loss). "
        "`reset` = L_ℓ(0) − L(1), the loss added when that layer alone is at its initialization; "
        "`max rise` = max_α L_ℓ(α) − L(1); `chord` and `rise` of the layer's curve as above; "
        "`most sensitive` = seeds whose largest `reset` is that layer.",
        "",
        "| config | layer | reset | max rise | chord | rise | most sensitive |",
        "|---|---|---|---|---|---|---|",
    ]
    for config, rs in by_config.items():
        if not rs:
            continue
        names = list(rs[0]["layers"])
        top = [max(names, key=lambda n, r=r: r["layers"][n]["reset_rise"]) for r in rs]
        for name in names:
            layer = [r["layers"][name] for r in rs]
            lines.append(
                f"| {config} | {name} | {_ms([v['reset_rise'] for v in layer])} "
                f"| {_ms([v['max_rise'] for v in layer])} "
                f"| {_ms([v['barrier']['chord_barrier'] for v in layer])} "
                f"| {_ms([v['barrier']['rise'] for v in layer], 4)} "
                f"| {top.count(name)}/{len(rs)} |"
            )
    # does the barrier predict final performance?
    lines += [
        "",
        "Spearman rank correlation of the barrier with the final test accuracy and test loss "
        "(ρ, two-sided p, n runs; `chord` of the train-loss path, `rise` of the test-loss path, "
        "`—` where one side is constant). Within a factor: the runs of all its levels "
        "pooled; within a configuration: its seeds only (n = 5, |ρ| ≥ 0.9 needed for p < 0.05).",
        "",
        "| runs | n | chord vs test acc | p | chord vs test loss | p | rise (test path) vs test acc"
        " | p | ‖θ_f − θ_0‖ vs rise (test path) | p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    subsets: list[tuple[str, list[dict]]] = [
        ("all", runs),
        ("true labels only", [r for r in runs if CONFIGS[r["config"]]["labels"] != "shuffled"]),
    ]
    true_mlp = [
        r for r in runs if CONFIGS[r["config"]]["labels"] != "shuffled" and _arch(r) == "mlp"
    ]
    subsets.append(("MLP, true labels", true_mlp))
    for factor, levels in FACTORS.items():
        subsets.append((f"factor: {factor}", [r for _, c in levels for r in by_config[c]]))
    for config, rs in by_config.items():
        subsets.append((f"config: {config}", rs))
    for label, rs in subsets:
        if not rs:
            continue
        chord = [r["train_barrier"]["chord_barrier"] for r in rs]
        rise = [r["test_barrier"]["rise"] for r in rs]  # the train paths never rise here
        acc = [r["final"]["test_accuracy"] for r in rs]
        loss = [r["final"]["test_loss"] for r in rs]
        dist = [r["distance"] for r in rs]
        cells = []
        for a, b in ((chord, acc), (chord, loss), (rise, acc), (dist, rise)):
            rho, p = _spearman(a, b)
            cells += [_fmt(rho, "+.2f"), _fmt(p)]
        lines.append(f"| {label} | {len(rs)} | " + " | ".join(cells) + " |")
    # presence of a barrier (a non-monotonic path) vs final test accuracy
    lines += [
        "",
        "Presence of a barrier (a non-monotonic path, rise > "
        f"{MONOTONIC_TOL:g} nats) vs final test accuracy: mean test accuracy of the runs with "
        "and without one, Mann-Whitney U two-sided p (the train-loss paths were all monotonic, "
        "so only the test-loss paths split).",
        "",
        "| runs | path | with barrier: n, test acc | without: n, test acc | Mann-Whitney p |",
        "|---|---|---|---|---|",
    ]
    presence_sets = [
        ("true labels", [r for r in runs if CONFIGS[r["config"]]["labels"] != "shuffled"]),
        ("MLP, true labels", true_mlp),
        ("CNN", [r for r in runs if _arch(r) == "cnn"]),
    ]
    for label, rs in presence_sets:
        for path in ("train", "test"):
            with_, without = [], []
            for r in rs:
                acc = r["final"]["test_accuracy"]
                (without if r[f"{path}_barrier"]["monotonic"] else with_).append(acc)
            lines.append(
                f"| {label} | {path} | {len(with_)}, {_ms(with_)} | {len(without)}, "
                f"{_ms(without)} | {_fmt(_mann_whitney(with_, without))} |"
            )


def _report_practical(practical: dict, lines: list[str]) -> None:
    for arch, block in practical.items():
        tuning = ", ".join(f"{lr}: {statistics.fmean(v):.4f}" for lr, v in block["tuning"].items())
        sens = ", ".join(f"{k} {v:.3f}" for k, v in block["sensitivity"].items())
        lines += [
            "",
            f"**{arch.upper()}** ({TASKS[arch]} model, SGD momentum 0.9, batch {BATCH}, "
            f"{block['epochs']} epochs). Layer sensitivity (mean `reset` of the study): {sens}; "
            f"most sensitive **{block['sensitive']}**, least sensitive {block['robust']}. "
            f"Base lr tuned on a validation split (train on the first 3200 training examples, "
            f"validate on the last 800; mean validation accuracy per lr: {tuning}) → "
            f"**lr {block['base_lr']:g}**.",
            "",
            "| arm | seeds | test acc | test loss | train loss | Δ test acc vs uniform | Welch p "
            "| Δ train loss vs uniform | Welch p |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        uniform = [v["test_accuracy"] for v in block["arms"]["uniform"]]
        uniform_train = [v["train_loss"] for v in block["arms"]["uniform"]]
        for name, values in block["arms"].items():
            acc = [v["test_accuracy"] for v in values]
            train = [v["train_loss"] for v in values]
            if name == "uniform":
                cells = "— | — | — | —"
            else:
                cells = (
                    f"{statistics.fmean(acc) - statistics.fmean(uniform):+.4f} "
                    f"| {_fmt(_welch(acc, uniform)[1])} "
                    f"| {statistics.fmean(train) - statistics.fmean(uniform_train):+.3f} "
                    f"| {_fmt(_welch(train, uniform_train)[1])}"
                )
            lines.append(
                f"| {name} | {len(values)} | {_ms(acc, 4)} "
                f"| {_ms([v['test_loss'] for v in values])} | {_ms(train)} | {cells} |"
            )
        # does the choice of layer matter? the most vs the least sensitive layer, same factor
        arms = block["arms"]
        for factor in sorted({name.split(" ")[1] for name in arms if name != "uniform"}):
            most = f"{block['sensitive']} {factor} (most sensitive)"
            least = f"{block['robust']} {factor} (least sensitive)"
            if most in arms and least in arms:
                a = [v["test_accuracy"] for v in arms[most]]
                b = [v["test_accuracy"] for v in arms[least]]
                ta = [v["train_loss"] for v in arms[most]]
                tb = [v["train_loss"] for v in arms[least]]
                lines.append(
                    f"| {most} vs {least} | | | | "
                    f"| {statistics.fmean(a) - statistics.fmean(b):+.4f} | {_fmt(_welch(a, b)[1])} "
                    f"| {statistics.fmean(ta) - statistics.fmean(tb):+.3f} "
                    f"| {_fmt(_welch(ta, tb)[1])} |"
                )


def _band(axes, alphas, curves, label, color=None) -> None:
    data = torch.tensor(curves, dtype=torch.float64)
    mean = data.mean(0)
    std = data.std(0) if data.shape[0] > 1 else torch.zeros_like(mean)
    (line,) = axes.plot(alphas, mean, label=label, color=color, lw=1.4)
    axes.fill_between(alphas, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def _figures(runs: list[dict], out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    by_config = {c: [r for r in runs if r["config"] == c] for c in CONFIGS}
    paths = []
    for key, suffix, ylabel in (
        ("train_curve", "", "train loss"),
        ("test_curve", "_test", "test loss"),
    ):
        figure = Figure(figsize=(10.5, 6.4), dpi=80)
        for index, (factor, levels) in enumerate(FACTORS.items()):
            if not any(by_config[config] for _, config in levels):
                continue
            axes = figure.add_subplot(2, 3, index + 1)
            for label, config in levels:
                rs = by_config[config]
                if rs:
                    _band(axes, rs[0]["alphas"], [r[key] for r in rs], label)
            axes.set_yscale("log")
            axes.set_title(f"{factor}: init → final")
            axes.set_xlabel("α")
            axes.set_ylabel(ylabel)
            axes.legend(fontsize=8)
        figure.tight_layout()
        paths.append(out / f"interpolation_factors{suffix}.png")
        figure.savefig(paths[-1])

    figure = Figure(figsize=(9, 3.4), dpi=80)
    for index, config in enumerate(("base", "cnn")):  # SGD runs
        rs = by_config[config]
        if not rs:
            continue
        axes = figure.add_subplot(1, 2, index + 1)
        alphas = rs[0]["alphas"]
        _band(axes, alphas, [r["train_curve"] for r in rs], "vary all", "black")
        for name in rs[0]["layers"]:
            _band(axes, alphas, [r["layers"][name]["train_loss"] for r in rs], f"vary {name}")
        axes.set_yscale("log")
        axes.set_title(f"layer-wise ({'MLP' if config == 'base' else 'CNN'}, others at final)")
        axes.set_xlabel("α")
        axes.set_ylabel("train loss")
        axes.legend(fontsize=7)
    figure.tight_layout()
    paths.append(out / "interpolation_layerwise.png")
    figure.savefig(paths[-1])

    figure = Figure(figsize=(4.8, 3.4), dpi=80)
    axes = figure.add_subplot(1, 1, 1)
    for config, rs in by_config.items():
        if rs:
            axes.scatter(
                [r["train_barrier"]["chord_barrier"] for r in rs],
                [r["final"]["test_accuracy"] for r in rs],
                label=config,
                s=14,
            )
    axes.set_xlabel("chord barrier of the init → final train-loss path")
    axes.set_ylabel("final test accuracy")
    axes.legend(fontsize=7)
    figure.tight_layout()
    paths.append(out / "interpolation_barrier_vs_accuracy.png")
    figure.savefig(paths[-1])
    return paths


def part_report(args: argparse.Namespace) -> None:
    payload = _load(args.json)
    lines: list[str] = []
    if "study" in payload:
        study = payload["study"]
        seeds = sorted({r["seed"] for r in study["runs"]})
        epochs = sorted({r["epochs"] for r in study["runs"]})
        invocations = study.get("invocations") or [
            {"command": study["command"], "machine": study["machine"]}
        ]
        lines.append(f"Study (seeds {seeds}, {epochs} epochs per training):")
        for invocation in invocations:
            lines += ["", f"`{invocation['command']}`", "", *machine_lines(invocation["machine"])]
        lines.append("")
        _report_study(study["runs"], lines)
        for path in _figures(study["runs"], args.figures):
            lines += ["", f"![{path.stem}](../figures/{path.name})"]
    if "practical" in payload:
        for arch, block in payload["practical"].items():
            lines += ["", f"Practical ({arch}) command: `{block['command']}`", ""]
            lines += machine_lines(block["machine"])
        _report_practical(payload["practical"], lines)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md is not None:
        args.md.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("study", "practical", "report"), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--practical-arch", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4, 0.8])
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--factors", type=float, nargs="+", default=[0.1, 3.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "docs" / "results" / "interpolation_study.json"
    )
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"study": part_study, "practical": part_practical, "report": part_report}[args.part](args)


if __name__ == "__main__":
    main()
