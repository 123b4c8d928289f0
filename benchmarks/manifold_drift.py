"""Constraint drift of the Riemannian optimizers after many steps (research/rest.md §1.4, §14).

For every manifold × dtype × optimizer: start from a random point, run ``--steps`` steps at
lr 1e-2 (RSGD with momentum 0.9, RAdam with its defaults) on the non-convex loss
``‖X − T‖² + Σ sin(3X)``, without drift control, and report the largest constraint violation at
the end (``torchvalley.optim.riemannian.constraint_violation``: ``|‖x‖ − 1|`` for spheres,
``max |XᵀX − I|`` for Stiefel, ``|⟨x, x⟩_L + k| / k`` for Lorentz, the excess norm for the
Poincaré ball) and the wall time.

Usage::

    python benchmarks/manifold_drift.py --steps 10000 --out /tmp/drift.md
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
    (Stiefel("cayley"), (64, 16)),
    (Stiefel("qr"), (64, 16)),
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [
        f"- {args.steps} steps, lr 1e-2, no drift control; CPU: {cpu_model()}; "
        f"load average at start {load_average()}; {args.threads} thread(s)",
        "",
        "| manifold | shape | optimizer | float64 violation | float32 violation | s (f64 / f32) |",
        "|---|---|---|---|---|---|",
    ]
    for manifold, shape in CASES:
        for label, cls, kwargs in OPTIMIZERS:
            v64, t64 = drift(manifold, shape, torch.float64, cls, kwargs, args.steps)
            v32, t32 = drift(manifold, shape, torch.float32, cls, kwargs, args.steps)
            lines.append(
                f"| {manifold!r} | {'×'.join(map(str, shape))} | {label} | {v64:.1e} | "
                f"{v32:.1e} | {t64:.1f} / {t32:.1f} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
