"""Gradient descent on an over-parameterised two-layer ReLU network (Du et al., ICLR 2019).

The setting of Du, Zhai, Póczos & Singh, "Gradient descent provably optimizes
over-parameterized neural networks", Section 5, scaled down: ``n`` inputs uniform on the unit
sphere of ``R^d``, Gaussian targets, ``f(x) = (1/√m) Σ_r a_r ReLU(w_rᵀx)`` with only the first
layer trained by full-batch gradient descent on ``½ Σ_i (f(x_i) − y_i)²`` at the paper's step
size ``η = c·λ₀/n²`` (``c = --lr-scale``, 1 by default), for several widths ``m``. It prints and
plots

* the loss against the iteration, next to the linear-rate bound ``L(0)(1 − ηλ₀/2)^k`` of
  the paper's gradient-descent theorem;
* ``λ_min(H(k))`` of the finite-width Gram matrix against ``λ₀ = λ_min(H∞)`` and ``λ₀/2``;
* ``max_r ‖w_r(k) − w_r(0)‖`` against the width (log-log, with a ``1/√m`` guide), and the
  fraction of activation patterns that changed.

Usage::

    python examples/ntk_two_layer.py [--quick] [--out reports/examples]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from torchvalley.landscape import (
    NTKTrajectory,
    TwoLayerReLU,
    ntk_gram,
    ntk_lambda0,
    train_two_layer_relu,
)


def sphere_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points uniform on the unit sphere of ``R^d`` and standard Gaussian targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x /= torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x, torch.randn(n, generator=g, dtype=torch.float64)


def loss_table(trajectory: NTKTrajectory) -> str:
    """Loss, the linear-rate bound, ``λ_min(H(k))`` and the movement at the recorded steps."""
    bound = trajectory.rate_bound()
    lines = [
        "| step | ½‖y−u(k)‖² | bound L(0)(1−ηλ₀/2)^k | λ_min(H(k)) | max_r ‖w_r−w_r(0)‖ |"
        " pattern changes |",
        "|---|---|---|---|---|---|",
    ]
    for index, step in enumerate(trajectory.record_steps):
        lines.append(
            f"| {step} | {trajectory.loss[step]:.4e} | {bound[step]:.4e} | "
            f"{trajectory.lambda_min[index]:.4f} | {trajectory.max_movement[index]:.4e} | "
            f"{trajectory.pattern_change[index]:.2e} |"
        )
    return "\n".join(lines) + "\n"


def width_table(runs: dict[int, NTKTrajectory]) -> str:
    """One row per width: final loss, ``λ_min(H)`` at the start and end, the movement."""
    lines = [
        "| m | final loss | λ_min(H(0)) | λ_min(H(K)) | max_r ‖Δw_r‖ | √m·max_r ‖Δw_r‖ "
        "| ‖ΔW‖_F | pattern changes | neurons changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for width, t in runs.items():
        lines.append(
            f"| {width} | {t.loss[-1]:.4e} | {t.lambda_min[0]:.4f} | {t.lambda_min[-1]:.4f} | "
            f"{t.max_movement[-1]:.4e} | {math.sqrt(width) * t.max_movement[-1]:.3f} | "
            f"{t.frobenius_movement[-1]:.3f} | {t.pattern_change[-1]:.2e} | "
            f"{t.neurons_changed[-1]:.2e} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[int, NTKTrajectory], lambda0: float, path: Path) -> None:
    """Loss vs bound, ``λ_min(H(k))`` vs iteration, movement vs width."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.0, 4.2))
    FigureCanvasAgg(fig)
    loss_ax, eig_ax, move_ax = fig.subplots(1, 3)
    for width, t in runs.items():
        steps = range(len(t.loss))
        line = loss_ax.plot(steps, t.loss, label=f"m={width}")[0]
        loss_ax.plot(steps, t.rate_bound(), color=line.get_color(), linestyle=":", linewidth=1)
        eig_ax.plot(t.record_steps, t.lambda_min, marker="o", ms=3, label=f"m={width}")
    loss_ax.plot([], [], color="grey", linestyle=":", label=r"bound $L(0)(1-\eta\lambda_0/2)^k$")
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("iteration k")
    loss_ax.set_ylabel(r"$\frac{1}{2}\|y-u(k)\|^2$")
    loss_ax.set_title("linear convergence at rate 1 − ηλ₀/2", fontsize=10)
    loss_ax.legend(fontsize=7)
    eig_ax.axhline(
        lambda0, color="black", linewidth=1, label=r"$\lambda_0=\lambda_{\min}(H^\infty)$"
    )
    eig_ax.axhline(lambda0 / 2, color="black", linewidth=1, linestyle="--", label=r"$\lambda_0/2$")
    eig_ax.set_xlabel("iteration k")
    eig_ax.set_ylabel(r"$\lambda_{\min}(H(k))$")
    eig_ax.set_title("the Gram matrix stays near its limit", fontsize=10)
    eig_ax.legend(fontsize=7)
    widths = list(runs)
    movement = [runs[w].max_movement[-1] for w in widths]
    move_ax.plot(widths, movement, marker="o", label=r"$\max_r\|w_r(K)-w_r(0)\|$")
    guide = [movement[0] * math.sqrt(widths[0] / w) for w in widths]
    move_ax.plot(widths, guide, color="grey", linestyle=":", label=r"$\propto 1/\sqrt{m}$")
    move_ax.plot(
        widths,
        [runs[w].pattern_change[-1] for w in widths],
        marker="s",
        label="fraction of patterns changed",
    )
    move_ax.set_xscale("log")
    move_ax.set_yscale("log")
    move_ax.set_xlabel("width m")
    move_ax.set_title("weights stay near initialisation", fontsize=10)
    move_ax.legend(fontsize=7)
    for ax in (loss_ax, eig_ax, move_ax):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n=8, d=10, 1000 steps (seconds)")
    parser.add_argument("--out", type=Path, default=Path("reports/examples"))
    parser.add_argument("--points", type=int, default=None, help="n (default 16, quick 8)")
    parser.add_argument("--dim", type=int, default=None, help="d (default 16, quick 10)")
    parser.add_argument("--steps", type=int, default=None, help="default 10000 (quick 1000)")
    parser.add_argument("--widths", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--lr-scale", type=float, default=1.0, help="c in η = c·λ₀/n²")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the tensors are small: 1)"
    )
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    n = args.points or (8 if args.quick else 16)
    d = args.dim or (10 if args.quick else 16)
    steps = args.steps or (1000 if args.quick else 10000)

    x, y = sphere_data(n, d, args.seed)
    lambda0 = ntk_lambda0(x)
    lr = args.lr_scale * lambda0 / n**2
    lambda_max = float(torch.linalg.eigvalsh(ntk_gram(x))[-1])
    print(
        f"n={n} points on the sphere of R^{d}: λ₀ = λ_min(H∞) = {lambda0:.4f}, "
        f"λ_max(H∞) = {lambda_max:.4f}, η = {args.lr_scale:g}·λ₀/n² = {lr:.3e}"
    )
    runs = {}
    for width in args.widths:
        g = torch.Generator().manual_seed(args.seed * 7919 + width)
        net = TwoLayerReLU(d, width, generator=g, dtype=torch.float64)
        runs[width] = train_two_layer_relu(
            net, x, y, steps=steps, lr=lr, record_every=max(1, steps // 10)
        )
    widest = max(runs)
    print(
        f"\nwidth m={widest}: loss against the linear-rate bound (1 − ηλ₀/2 = "
        f"{runs[widest].rate:.6f} per step)"
    )
    print(loss_table(runs[widest]))
    print(f"after {steps} steps, by width:")
    print(width_table(runs))
    path = args.out / "ntk_two_layer.png"
    plot(runs, lambda0, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
