"""Constraint drift of the Riemannian optimizers after many steps (research/rest.md §1.4, §14).

For every manifold × dtype × optimizer: start from a random point, run ``--steps`` steps at
lr 1e-2 (RSGD with momentum 0.9, RAdam with its defaults) on the non-convex loss
``‖X − T‖² + Σ sin(3X)``, without drift control, and report the largest constraint violation at
the end (``manifold.violation(x)``: ``|‖x‖ − 1|`` for spheres,
``max |XᵀX − I|`` for Stiefel, ``|⟨x, x⟩_L + k| / k`` for Lorentz, the excess norm for the
Poincaré ball) and the wall time.

Usage::

    python benchmarks/manifold_drift.py --steps 10000 --out /tmp/drift.md
    python benchmarks/manifold_drift.py --steps 50000 --only Stiefel --dtypes float32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from torchvalley import ManifoldParameter
from torchvalley.bench.machine import cpu_model, load_average
from torchvalley.manifolds import Lorentz, Oblique, PoincareBall, Sphere, Stiefel
from torchvalley.optim import RiemannianAdam, RiemannianSGD

CASES = (
    (Sphere(), (100, 16)),
    (Oblique(), (10, 16)),
    (Stiefel(), (64, 16)),  # the default retraction (QR since issue 20 item 5)
    (Stiefel("cayley"), (64, 16)),
    (Stiefel("polar"), (64, 16)),
    (Lorentz(), (100, 8)),
    (PoincareBall(), (100, 5)),
)
OPTIMIZERS = (
    ("rsgd (momentum 0.9)", RiemannianSGD, {"momentum": 0.9}),
    ("radam", RiemannianAdam, {}),
)


def drift(manifold, shape, dtype, cls, kwargs, steps: int) -> tuple[float, float]:
    """Final violation and seconds for one run."""
    g = torch.Generator().manual_seed(0)
    start = manifold.random(*shape, generator=g, dtype=torch.float64)
    x = ManifoldParameter(start.to(dtype), manifold, project=True)
    target = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    opt = cls([x], lr=1e-2, **kwargs)
    begin = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        (((x - target) ** 2).sum() + torch.sin(3 * x).sum()).backward()
        opt.step()
    return opt.max_violation(), time.perf_counter() - begin


def main(argv: list[str] | None = None) -> int:
    """Run every case and print (and optionally write) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--only", default="", help="run only the manifolds whose repr contains this text"
    )
    parser.add_argument(
        "--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"]
    )
    args = parser.parse_args(argv)
    dtypes = [getattr(torch, d) for d in args.dtypes]
    torch.set_num_threads(args.threads)
    lines = [
        f"- {args.steps} steps, lr 1e-2, no drift control; CPU: {cpu_model()}; "
        f"load average at start {load_average()}; {args.threads} thread(s)",
        "",
        "| manifold | shape | optimizer | "
        + " | ".join(f"{d} violation" for d in args.dtypes)
        + f" | s ({' / '.join(args.dtypes)}) |",
        "|---|---|---|" + "---|" * (len(dtypes) + 1),
    ]
    for manifold, shape in CASES:
        if args.only not in repr(manifold):
            continue
        for label, cls, kwargs in OPTIMIZERS:
            runs = [drift(manifold, shape, d, cls, kwargs, args.steps) for d in dtypes]
            lines.append(
                f"| {manifold!r} | {'×'.join(map(str, shape))} | {label} | "
                + " | ".join(f"{v:.1e}" for v, _ in runs)
                + f" | {' / '.join(f'{t:.1f}' for _, t in runs)} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
