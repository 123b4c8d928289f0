"""Gradient descent aligns the layers of a deep linear network (Ji & Telgarsky, ICLR 2019).

The setting of the paper's Figure 1: linearly separable data, a deep linear network
``y = W_L ⋯ W_1 x`` without biases, the logistic loss and full-batch gradient descent with a
small constant step. Along training, this prints and plots (against the iteration, log x axis)

* ``‖W_i‖₂/‖W_i‖_F`` for every layer, which tends to 1 (each layer becomes rank one);
* the adjacent-layer alignment ``|⟨v_{i+1}, u_i⟩|`` (top right singular vector of the next layer
  against the top left singular vector of this one), which tends to 1;
* the cosine between the end-to-end predictor ``W_L ⋯ W_1`` and the hard-margin SVM through
  the origin, for the deep network and for a one-layer network (both converge to it).

A small initialisation (``--init``) makes the rank-one part dominate quickly: the ratios only
approach 1 as the norms grow, logarithmically in the number of steps.

Usage::

    python examples/deep_linear_alignment.py [--quick] [--out reports/examples]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from torchvalley.landscape import LayerAlignment, layer_alignment, max_margin_direction


def separable_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian points labelled by a random hyperplane through 0 and pushed 0.5 off it."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(d, generator=g, dtype=torch.float64)
    normal /= torch.linalg.vector_norm(normal)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.sign(x @ normal)
    return x + 0.5 * y[:, None] * normal, y


def deep_linear(dims: Sequence[int], init: float, seed: int) -> nn.Sequential:
    """Bias-free linear layers ``dims[0] → … → dims[-1]``, weights ``init·N(0, 1/fan_in)``."""
    g = torch.Generator().manual_seed(seed)
    layers = [
        nn.Linear(dims[i], dims[i + 1], bias=False, dtype=torch.float64)
        for i in range(len(dims) - 1)
    ]
    with torch.no_grad():
        for layer in layers:
            shape = layer.weight.shape
            noise = torch.randn(shape, generator=g, dtype=torch.float64)
            layer.weight.copy_(init * noise / math.sqrt(shape[1]))
    return nn.Sequential(*layers)


def checkpoints(steps: int, per_decade: int = 4) -> list[int]:
    """0, 1 and about ``per_decade`` log-spaced steps per decade up to ``steps``."""
    points = {0, steps}
    k = 0.0
    while 10**k < steps:
        points.add(round(10**k))
        k += 1 / per_decade
    return sorted(points)


def train(
    net: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    svm: torch.Tensor,
    *,
    lr: float,
    steps: int,
) -> list[tuple[int, float, LayerAlignment]]:
    """Full-batch GD on the mean logistic loss; ``(step, loss, alignment)`` at checkpoints."""
    record = set(checkpoints(steps))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    history = []
    for step in range(steps + 1):
        optimizer.zero_grad()
        loss = nn.functional.softplus(-y * net(x).squeeze(1)).mean()
        if step in record:
            history.append((step, loss.item(), layer_alignment(net, svm)))
        if step == steps:
            break
        loss.backward()
        optimizer.step()
    return history


def table(
    deep: list[tuple[int, float, LayerAlignment]],
    shallow: list[tuple[int, float, LayerAlignment]],
) -> str:
    """A markdown table of the recorded statistics."""
    depth = deep[0][2].depth
    header = (
        ["step", "loss"]
        + [f"‖W{i + 1}‖₂/‖W{i + 1}‖_F" for i in range(depth)]
        + [f"abs⟨v{i + 2},u{i + 1}⟩" for i in range(depth - 1)]
        + ["cos(W_L⋯W_1, SVM)", "cos(1-layer, SVM)"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (step, loss, report), (_, _, one) in zip(deep, shallow, strict=True):
        cells = [str(step), f"{loss:.3e}"]
        cells += [f"{r:.5f}" for r in report.ratios] + [f"{a:.6f}" for a in report.adjacent]
        cells += [f"{report.predictor_alignment:.6f}", f"{one.predictor_alignment:.6f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(
    deep: list[tuple[int, float, LayerAlignment]],
    shallow: list[tuple[int, float, LayerAlignment]],
    path: Path,
) -> None:
    """Left: ratios and adjacent alignments; right: loss and 1 − cos with the SVM (log-log)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    deep = [entry for entry in deep if entry[0] > 0]  # a log axis has no step 0
    shallow = [entry for entry in shallow if entry[0] > 0]
    steps = [step for step, _, _ in deep]
    depth = deep[0][2].depth
    fig = Figure(figsize=(11.0, 4.2))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for i in range(depth):
        label = rf"$\|W_{{{i + 1}}}\|_2 / \|W_{{{i + 1}}}\|_F$"
        left.plot(steps, [r.ratios[i] for _, _, r in deep], marker="o", ms=3, label=label)
    for i in range(depth - 1):
        label = rf"$|\langle v_{{{i + 2}}}, u_{{{i + 1}}}\rangle|$"
        left.plot(steps, [r.adjacent[i] for _, _, r in deep], linestyle="--", label=label)
    left.axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
    left.set_xscale("log")
    left.set_xlabel("iteration (log scale)")
    left.set_ylabel("alignment")
    left.set_title(f"depth-{depth} linear network, logistic loss", fontsize=10)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    right.plot(steps, [loss for _, loss, _ in deep], color="black", label="loss (deep)")
    for label, history in (("deep", deep), ("1-layer", shallow)):
        gap = [max(1.0 - r.predictor_alignment, 1e-16) for _, _, r in history]
        right.plot(steps, gap, marker="o", ms=3, label=f"1 − cos(predictor, SVM), {label}")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("iteration (log scale)")
    right.set_title("risk and direction of the end-to-end predictor", fontsize=10)
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="depth 3, 1000 steps (seconds)")
    parser.add_argument("--out", type=Path, default=Path("reports/examples"))
    parser.add_argument("--depth", type=int, default=None, help="default 4 (3 with --quick)")
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--dim", type=int, default=2, help="input dimension (Figure 1: 2)")
    parser.add_argument("--points", type=int, default=40)
    parser.add_argument("--steps", type=int, default=None, help="default 20000 (1000 quick)")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--init", type=float, default=0.05, help="initial weight scale")
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
    depth = args.depth or (3 if args.quick else 4)
    steps = args.steps or (1000 if args.quick else 20000)

    x, y = separable_data(args.points, args.dim, args.seed)
    svm = max_margin_direction(x, y)
    dims = [args.dim] + [args.width] * (depth - 1) + [1]
    deep = train(deep_linear(dims, args.init, args.seed), x, y, svm, lr=args.lr, steps=steps)
    one = deep_linear([args.dim, 1], args.init, args.seed + 1)
    shallow = train(one, x, y, svm, lr=args.lr, steps=steps)

    print(f"deep linear network {dims}, {args.points} separable points, lr={args.lr}")
    print(table(deep, shallow))
    path = args.out / "deep_linear_alignment.png"
    plot(deep, shallow, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
