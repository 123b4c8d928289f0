"""Figures for the two theory papers: Du et al. (ICLR 2019) and Ji & Telgarsky (ICLR 2019).

Two measurements, several seeds each, mean ± standard deviation over seeds:

``width`` — Du, Zhai, Póczos & Singh, *Gradient descent provably optimizes over-parameterized
neural networks*. ``n`` inputs uniform on the unit sphere of ``R^d`` with Gaussian targets (one
fixed draw), ``f(x) = (1/√m) Σ_r a_r ReLU(w_rᵀx)`` with only ``W`` trained by full-batch gradient
descent on ``½‖y − u‖²`` (:func:`torchvalley.landscape.train_two_layer_relu`), the same step
``η`` and number of steps at every width ``m``, several initialisation seeds per width. Per
width: the relative movement ``‖W(K) − W(0)‖_F / ‖W(0)‖_F`` and ``max_r ‖w_r(K) − w_r(0)‖``,
``λ_min(H(0))`` and ``λ_min(H(K))`` of the finite-width Gram matrix against
``λ₀ = λ_min(H∞)`` (:func:`torchvalley.landscape.ntk_gram`), the final loss and the fraction
of activation patterns that changed. The theory says: as ``m`` grows, ``λ_min(H(0)) → λ₀``,
``λ_min(H(K)) ≥ λ₀/2``, the loss converges linearly, the per-neuron movement shrinks like
``1/√m`` (so the relative movement like ``1/√m`` as well, ``‖W(0)‖_F ≈ √(md)``).

``alignment`` — Ji & Telgarsky, *Gradient descent aligns the layers of deep linear networks*.
Linearly separable points, a bias-free depth-``L`` network trained by full-batch gradient
descent on the mean logistic loss, once purely linear (the theorem's setting) and once with a
ReLU between the layers (where the theorem says nothing), from the same initialisation. Along
training (log-spaced checkpoints): ``‖W_i‖₂/‖W_i‖_F`` per layer and the adjacent-layer alignment
``|⟨v_{i+1}, u_i⟩|`` (:func:`torchvalley.landscape.layer_alignment`), and for the linear network
the cosine of the end-to-end predictor with the max-margin direction
(:func:`torchvalley.landscape.max_margin_direction`).

Usage::

    python benchmarks/theory_figures.py [width|alignment|all] [--seeds 5] [--out REPORT.md]
        [--json RESULTS.json] [--figures docs/figures]

Writes ``theory_ntk_width.png`` and ``theory_alignment.png`` into ``--figures``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchvalley.bench.machine import load_average
from torchvalley.landscape import (
    TwoLayerReLU,
    layer_alignment,
    max_margin_direction,
    ntk_gram,
    train_two_layer_relu,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_facts, machine_lines, write_outputs

DTYPE = torch.float64


# ----------------------------------------------------------------------------------------------
# Du et al.: weight movement and the Gram matrix against the width
# ----------------------------------------------------------------------------------------------


def sphere_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points uniform on the unit sphere of ``R^d`` and standard Gaussian targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DTYPE)
    x /= torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x, torch.randn(n, generator=g, dtype=DTYPE)


def width_study(
    *,
    widths: Sequence[int],
    seeds: Sequence[int],
    points: int,
    dim: int,
    steps: int,
    lr_scale: float,
    data_seed: int,
) -> dict[str, Any]:
    """Train every (width, seed) once; per-run end-of-training statistics."""
    x, y = sphere_data(points, dim, data_seed)
    h_inf = ntk_gram(x)
    eigenvalues = torch.linalg.eigvalsh(h_inf)
    lambda0, lambda_max = float(eigenvalues[0]), float(eigenvalues[-1])
    # The kernel-regime dynamics u̇ = H∞(y − u) are stable for η < 2/λ_max(H∞); η = c/λ_max.
    lr = lr_scale / lambda_max
    runs: dict[str, list[dict[str, float]]] = {}
    for width in widths:
        rows = []
        for seed in seeds:
            g = torch.Generator().manual_seed(10_000 * seed + width)
            model = TwoLayerReLU(dim, width, generator=g, dtype=DTYPE)
            initial_norm = float(torch.linalg.vector_norm(model.weight.detach()))
            t = train_two_layer_relu(
                model, x, y, steps=steps, lr=lr, record_every=max(1, steps // 10)
            )
            rows.append(
                {
                    "seed": seed,
                    "loss_start": t.loss[0],
                    "loss_end": t.loss[-1],
                    "lambda_min_start": t.lambda_min[0],
                    "lambda_min_end": t.lambda_min[-1],
                    "lambda_min_lowest": min(t.lambda_min),
                    "relative_movement": t.frobenius_movement[-1] / initial_norm,
                    "max_movement": t.max_movement[-1],
                    "pattern_change": t.pattern_change[-1],
                    "neurons_changed": t.neurons_changed[-1],
                    "loss_curve": t.loss[:: max(1, steps // 200)],
                }
            )
        runs[str(width)] = rows
    return {
        "points": points,
        "dim": dim,
        "steps": steps,
        "lr": lr,
        "lr_scale": lr_scale,
        "lambda0": lambda0,
        "lambda_max_h_inf": lambda_max,
        "paper_lr": lambda0 / points**2,
        "curve_every": max(1, steps // 200),
        "data_seed": data_seed,
        "seeds": list(seeds),
        "runs": runs,
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _stat(rows: Sequence[dict[str, float]], key: str) -> tuple[float, float]:
    return _mean_std([row[key] for row in rows])


def width_table(result: dict[str, Any]) -> str:
    """One row per width, mean ± std over the seeds."""
    lines = [
        "| m | final loss ½‖y−u‖² | λ_min(H(0)) | λ_min(H(K)) | min_k λ_min(H(k)) "
        "| ‖W(K)−W(0)‖_F/‖W(0)‖_F | √m · rel. movement | max_r ‖Δw_r‖ "
        "| patterns changed | neurons changed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for width, rows in result["runs"].items():
        m = int(width)
        cells = [width]
        for key, fmt in (
            ("loss_end", ".2e"),
            ("lambda_min_start", ".4f"),
            ("lambda_min_end", ".4f"),
            ("lambda_min_lowest", ".4f"),
            ("relative_movement", ".2e"),
        ):
            mean, std = _stat(rows, key)
            cells.append(f"{mean:{fmt}} ± {std:{fmt}}")
        scaled = [math.sqrt(m) * row["relative_movement"] for row in rows]
        mean, std = _mean_std(scaled)
        cells.append(f"{mean:.3f} ± {std:.3f}")
        for key in ("max_movement", "pattern_change", "neurons_changed"):
            mean, std = _stat(rows, key)
            cells.append(f"{mean:.2e} ± {std:.2e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def width_plot(result: dict[str, Any], path: Path) -> None:
    """Movement, λ_min and final loss against the width, error bars = std over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    widths = [int(w) for w in result["runs"]]
    runs = list(result["runs"].values())

    def series(key: str) -> tuple[list[float], list[float]]:
        stats = [_stat(rows, key) for rows in runs]
        return [s[0] for s in stats], [s[1] for s in stats]

    fig = Figure(figsize=(13.0, 3.8))
    FigureCanvasAgg(fig)
    move_ax, eig_ax, loss_ax = fig.subplots(1, 3)
    mean, std = series("relative_movement")
    move_ax.errorbar(widths, mean, yerr=std, marker="o", capsize=3, label="‖W(K)−W(0)‖_F/‖W(0)‖_F")
    guide = [mean[-1] * math.sqrt(widths[-1] / w) for w in widths]
    move_ax.plot(widths, guide, color="grey", linestyle=":", label="∝ 1/√m")
    mean, std = series("pattern_change")
    move_ax.errorbar(widths, mean, yerr=std, marker="s", capsize=3, label="patterns changed")
    move_ax.set_xscale("log")
    move_ax.set_yscale("log")
    move_ax.set_xlabel("width m")
    move_ax.set_title("relative weight movement at the end", fontsize=10)
    move_ax.legend(fontsize=7)
    for key, label, marker in (
        ("lambda_min_start", "λ_min(H(0))", "o"),
        ("lambda_min_end", "λ_min(H(K))", "s"),
    ):
        mean, std = series(key)
        eig_ax.errorbar(widths, mean, yerr=std, marker=marker, capsize=3, label=label)
    eig_ax.axhline(result["lambda0"], color="black", linewidth=1, label="λ₀ = λ_min(H∞)")
    eig_ax.axhline(result["lambda0"] / 2, color="black", linewidth=1, linestyle="--", label="λ₀/2")
    eig_ax.set_xscale("log")
    eig_ax.set_xlabel("width m")
    eig_ax.set_title("least eigenvalue of the Gram matrix", fontsize=10)
    eig_ax.legend(fontsize=7)
    every = result["curve_every"]
    for width, rows in zip(widths, runs, strict=True):
        curves = torch.tensor([row["loss_curve"] for row in rows], dtype=DTYPE)
        curve = curves.mean(dim=0).clamp_min(1e-32)
        loss_ax.plot([every * k for k in range(len(curve))], curve.tolist(), label=f"m={width}")
    start = statistics.fmean(row["loss_start"] for rows in runs for row in rows)
    rate = 1 - result["lr"] * result["lambda0"] / 2
    bound_steps = list(range(0, result["steps"] + 1, every))
    loss_ax.plot(
        bound_steps,
        [start * rate**k for k in bound_steps],
        color="grey",
        linestyle=":",
        label="L(0)(1−ηλ₀/2)^k",
    )
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("gradient step k")
    loss_ax.set_title("½‖y−u(k)‖², mean over seeds", fontsize=10)
    loss_ax.legend(fontsize=7)
    for ax in (move_ax, eig_ax, loss_ax):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


# ----------------------------------------------------------------------------------------------
# Ji & Telgarsky: layer alignment against the step, linear vs ReLU
# ----------------------------------------------------------------------------------------------


def separable_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian points labelled by a random hyperplane through 0 and pushed 0.5 off it."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(d, generator=g, dtype=DTYPE)
    normal /= torch.linalg.vector_norm(normal)
    x = torch.randn(n, d, generator=g, dtype=DTYPE)
    y = torch.sign(x @ normal)
    return x + 0.5 * y[:, None] * normal, y


def make_network(dims: Sequence[int], init: float, seed: int, relu: bool) -> nn.Sequential:
    """Bias-free ``dims[0] → … → dims[-1]``, weights ``init·N(0, 1/fan_in)``, ReLU optional.

    The linear and the ReLU network of one seed get the same weights.
    """
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layer = nn.Linear(dims[i], dims[i + 1], bias=False, dtype=DTYPE)
        with torch.no_grad():
            noise = torch.randn(layer.weight.shape, generator=g, dtype=DTYPE)
            layer.weight.copy_(init * noise / math.sqrt(dims[i]))
        if layers and relu:
            layers.append(nn.ReLU())
        layers.append(layer)
    return nn.Sequential(*layers)


def checkpoints(steps: int, per_decade: int = 5) -> list[int]:
    """0, 1 and about ``per_decade`` log-spaced steps per decade up to ``steps``."""
    points = {0, steps}
    k = 0.0
    while 10**k < steps:
        points.add(round(10**k))
        k += 1 / per_decade
    return sorted(points)


def train_alignment(
    net: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    svm: torch.Tensor,
    *,
    lr: float,
    steps: int,
) -> list[dict[str, Any]]:
    """Full-batch GD on the mean logistic loss; the alignment statistics at checkpoints."""
    record = set(checkpoints(steps))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    history = []
    for step in range(steps + 1):
        optimizer.zero_grad()
        margins = y * net(x).squeeze(1)
        loss = nn.functional.softplus(-margins).mean()
        if step in record:
            # layer_alignment reads the nn.Linear weights in order and ignores the ReLUs; for
            # the ReLU network the end-to-end "product" is not the network's map, so only the
            # per-layer and adjacent statistics are meaningful there.
            report = layer_alignment(net, svm)
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "train_error": float((margins <= 0).to(DTYPE).mean()),
                    "ratios": list(report.ratios),
                    "adjacent": list(report.adjacent),
                    "predictor_alignment": report.predictor_alignment,
                    "first_layer_svm": report.direction_alignment,
                }
            )
        if step == steps:
            break
        loss.backward()
        optimizer.step()
    return history


def alignment_study(
    *,
    seeds: Sequence[int],
    points: int,
    dim: int,
    depth: int,
    width: int,
    steps: int,
    lr: float,
    init: float,
) -> dict[str, Any]:
    """For every seed: new data and initialisation; the linear and the ReLU network."""
    dims = [dim] + [width] * (depth - 1) + [1]
    runs: dict[str, list[list[dict[str, Any]]]] = {"linear": [], "relu": []}
    for seed in seeds:
        x, y = separable_data(points, dim, seed)
        svm = max_margin_direction(x, y)
        for kind in runs:
            net = make_network(dims, init, seed, relu=kind == "relu")
            runs[kind].append(train_alignment(net, x, y, svm, lr=lr, steps=steps))
    return {
        "points": points,
        "dims": dims,
        "steps": steps,
        "lr": lr,
        "init": init,
        "seeds": list(seeds),
        "runs": runs,
    }


def _alignment_series(
    histories: Sequence[Sequence[dict[str, Any]]], pick: Any
) -> tuple[list[int], list[float], list[float]]:
    steps = [entry["step"] for entry in histories[0]]
    stats = [_mean_std([pick(h[i]) for h in histories]) for i in range(len(steps))]
    return steps, [s[0] for s in stats], [s[1] for s in stats]


def alignment_table(result: dict[str, Any]) -> str:
    """Per network and selected checkpoints: mean ± std over seeds of the alignment statistics."""
    depth = len(result["dims"]) - 1
    header = (
        ["network", "step", "loss", "min_i ‖W_i‖₂/‖W_i‖_F"]
        + [f"‖W{i + 1}‖₂/‖W{i + 1}‖_F" for i in range(depth - 1)]
        + ["min_i abs⟨v_{i+1},u_i⟩", "cos(W_L⋯W_1, SVM)"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    wanted = {0, 10, 100, 1000, 10_000, 100_000, result["steps"]}
    for kind, histories in result["runs"].items():
        for index, entry in enumerate(histories[0]):
            if entry["step"] not in wanted:
                continue
            column = [h[index] for h in histories]
            cells = [kind, str(entry["step"])]
            mean, std = _mean_std([e["loss"] for e in column])
            cells.append(f"{mean:.2e} ± {std:.1e}")
            mean, std = _mean_std([min(e["ratios"]) for e in column])
            cells.append(f"{mean:.4f} ± {std:.4f}")
            for i in range(depth - 1):  # the last layer (one output) is rank one trivially
                mean, std = _mean_std([e["ratios"][i] for e in column])
                cells.append(f"{mean:.4f} ± {std:.4f}")
            mean, std = _mean_std([min(e["adjacent"]) for e in column])
            cells.append(f"{mean:.4f} ± {std:.4f}")
            if kind == "linear":
                mean, std = _mean_std([e["predictor_alignment"] for e in column])
                cells.append(f"{mean:.5f} ± {std:.5f}")
            else:
                cells.append("n/a (not a linear map)")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _band(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """``mean − std`` and ``mean + std``, for a shaded band."""
    pairs = list(zip(mean, std, strict=True))
    return [m - s for m, s in pairs], [m + s for m, s in pairs]


def alignment_plot(result: dict[str, Any], path: Path) -> None:
    """Left: linear network; right: ReLU network. Min ratio and min adjacent alignment."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    titles = {
        "linear": "deep linear network (the theorem's setting)",
        "relu": "same network with ReLU between layers (no theorem)",
    }
    depth = len(result["dims"]) - 1
    for ax, (kind, histories) in zip(axes, result["runs"].items(), strict=True):
        trimmed = [[e for e in h if e["step"] > 0] for h in histories]
        for i in range(depth - 1):
            steps, mean, std = _alignment_series(trimmed, lambda e, i=i: e["ratios"][i])
            ax.plot(steps, mean, label=f"‖W{i + 1}‖₂/‖W{i + 1}‖_F")
            ax.fill_between(steps, *_band(mean, std), alpha=0.2)
        for i in range(depth - 1):
            steps, mean, std = _alignment_series(trimmed, lambda e, i=i: e["adjacent"][i])
            ax.plot(steps, mean, linestyle="--", label=f"|⟨v{i + 2}, u{i + 1}⟩|")
            ax.fill_between(steps, *_band(mean, std), alpha=0.15)
        if kind == "linear":
            steps, mean, std = _alignment_series(trimmed, lambda e: e["predictor_alignment"])
            ax.plot(steps, mean, color="black", linestyle=":", label="cos(W_L⋯W_1, SVM)")
        ax.set_xscale("log")
        ax.set_xlabel("gradient step (log scale)")
        ax.set_title(titles[kind], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel(f"mean ± std over {len(result['seeds'])} seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", choices=["width", "alignment", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument("--out", type=Path, default=None, help="markdown report")
    parser.add_argument("--json", type=Path, default=None, help="raw numbers")
    width = parser.add_argument_group("width (Du et al.)")
    width.add_argument("--widths", type=int, nargs="+", default=[16, 64, 256, 1024, 4096, 16384])
    width.add_argument("--points", type=int, default=32, help="n")
    width.add_argument("--dim", type=int, default=16, help="d")
    width.add_argument("--ntk-steps", type=int, default=300)
    width.add_argument("--lr-scale", type=float, default=1.0, help="η = c/λ_max(H∞)")
    width.add_argument("--data-seed", type=int, default=0)
    align = parser.add_argument_group("alignment (Ji & Telgarsky)")
    align.add_argument("--align-points", type=int, default=100)
    align.add_argument("--align-dim", type=int, default=10)
    align.add_argument("--depth", type=int, default=4)
    align.add_argument("--align-width", type=int, default=10)
    align.add_argument("--align-steps", type=int, default=20_000)
    align.add_argument("--align-lr", type=float, default=0.2)
    align.add_argument("--init", type=float, default=0.1, help="weights init·N(0, 1/fan_in)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    load_start = load_average()
    payload: dict[str, Any] = {}
    sections: list[str] = []
    command = "python benchmarks/theory_figures.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if args.part in ("width", "all"):
        started = time.perf_counter()
        result = width_study(
            widths=args.widths,
            seeds=seeds,
            points=args.points,
            dim=args.dim,
            steps=args.ntk_steps,
            lr_scale=args.lr_scale,
            data_seed=args.data_seed,
        )
        result["seconds"] = time.perf_counter() - started
        payload["width"] = result
        width_plot(result, args.figures / "theory_ntk_width.png")
        sections.append(
            f"### Width (Du et al.): n = {result['points']}, d = {result['dim']}, "
            f"K = {result['steps']} steps, η = {result['lr']:.4f} "
            f"(= {args.lr_scale}/λ_max(H∞); the theorem's λ₀/n² = {result['paper_lr']:.2e}), "
            f"λ₀ = {result['lambda0']:.4f}, seeds {seeds}, {result['seconds']:.0f} s\n\n"
            + width_table(result)
        )
    if args.part in ("alignment", "all"):
        started = time.perf_counter()
        result = alignment_study(
            seeds=seeds,
            points=args.align_points,
            dim=args.align_dim,
            depth=args.depth,
            width=args.align_width,
            steps=args.align_steps,
            lr=args.align_lr,
            init=args.init,
        )
        result["seconds"] = time.perf_counter() - started
        payload["alignment"] = result
        alignment_plot(result, args.figures / "theory_alignment.png")
        sections.append(
            f"### Alignment (Ji & Telgarsky): dims {result['dims']}, {result['points']} "
            f"separable points, η = {result['lr']}, init scale {result['init']}, "
            f"seeds {seeds}, {result['seconds']:.0f} s\n\n" + alignment_table(result)
        )
    facts = machine_facts(load_start)
    payload["machine"] = facts
    report = "\n".join([f"`{command}`", "", *machine_lines(facts), "", *sections])
    write_outputs(report, payload, args.out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
