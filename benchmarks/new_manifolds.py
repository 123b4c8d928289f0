"""Issue 21: drift of the new manifolds over many steps, and step cost against geoopt.

``drift``: for each new manifold × float32/float64, RSGD (momentum 0.9) and RAdam at lr 1e-2 on
Σ d(x, t)² + 0.1 Σ sin(3x) (‖x − t‖² for the Birkhoff polytope; the real part of x in the
wiggle for the complex Siegel spaces), no drift control, reporting ``manifold.violation(x)`` at
the end (``non-finite`` if the point has a NaN/inf entry), the loss at the start and the end,
the largest condition number for SPD points, and the wall time. ``cost``: one RAdam step on
SPD (affine) and Stereographic (κ = −1) parameters, ours vs geoopt's RiemannianAdam,
interleaved round-robin, median of the repeats.

Usage::

    python benchmarks/new_manifolds.py drift --steps 10000
    python benchmarks/new_manifolds.py drift --steps 10000 --only Birkhoff --dtypes float32
    python benchmarks/new_manifolds.py cost --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from torchvalley.bench.machine import cpu_model
from torchvalley.manifolds import (
    BirkhoffPolytope,
    BoundedDomain,
    ManifoldParameter,
    Scaled,
    Sphere,
    SphereSubspaceIntersection,
    Stereographic,
    SymmetricPositiveDefinite,
    UpperHalf,
)
from torchvalley.optim import RiemannianAdam, RiemannianSGD

CASES = (
    ("SPD affine (16×4×4)", SymmetricPositiveDefinite(), (16, 4, 4)),
    ("SPD log-Euclidean (16×4×4)", SymmetricPositiveDefinite("log-euclidean"), (16, 4, 4)),
    ("SPD Bures–Wasserstein (16×4×4)", SymmetricPositiveDefinite("bures-wasserstein"), (16, 4, 4)),
    ("Stereographic κ=−1 (100×5)", Stereographic(-1.0), (100, 5)),
    ("Stereographic κ=+1 exact (100×5)", Stereographic(1.0, exact=True), (100, 5)),
    ("Stereographic κ=+1 first-order (100×5)", Stereographic(1.0, exact=False), (100, 5)),
    ("Stereographic κ=0 (100×5)", Stereographic(0.0), (100, 5)),
    ("Birkhoff (16×4×4)", BirkhoffPolytope(), (16, 4, 4)),
    ("UpperHalf (8×3×3)", UpperHalf(), (8, 3, 3)),
    ("BoundedDomain (8×3×3)", BoundedDomain(), (8, 3, 3)),
    (
        "Sphere ∩ subspace (100×6)",
        SphereSubspaceIntersection(torch.eye(6, dtype=torch.float64)[:, :3]),
        (100, 6),
    ),
    ("Scaled sphere r=2 (100×16)", Scaled(Sphere(), 2.0), (100, 16)),
)


def _loss(m, x, t):
    if isinstance(m, BirkhoffPolytope):
        return (x - t).square().sum()
    wiggle = torch.sin(3 * (x.real if x.is_complex() else x)).sum()
    return m.dist(x, t).square().sum() + 0.1 * wiggle


def _one_run(m, shape, dtype, cls, kw, steps: int) -> str:
    g = torch.Generator().manual_seed(0)
    x = ManifoldParameter(m.random(*shape, generator=g, dtype=dtype), m)
    t = m.random(*shape, generator=g, dtype=dtype)
    opt = cls([x], lr=1e-2, hyperbolic_float64=False, **kw)
    with torch.no_grad():
        first = float(_loss(m, x, t))
    begin = time.perf_counter()
    for step in range(1, steps + 1):
        opt.zero_grad()
        _loss(m, x, t).backward()
        opt.step()
        if step % 100 == 0 and not bool(torch.isfinite(x.detach()).all()):
            seconds = time.perf_counter() - begin
            return f"non-finite by step {step} | {first:.3g} → nan | | {seconds:.0f}"
    seconds = time.perf_counter() - begin
    xd = x.detach()
    if not bool(torch.isfinite(xd).all()):
        return f"non-finite | {first:.3g} → nan | | {seconds:.0f}"
    with torch.no_grad():
        last = float(_loss(m, x, t))
    note = ""
    if isinstance(m, SymmetricPositiveDefinite):
        w = torch.linalg.eigvalsh(xd.double())
        note = f"cond ≤ {float((w[..., -1] / w[..., 0]).max()):.1e}"
    return f"{float(m.violation(xd)):.1e} | {first:.3g} → {last:.3g} | {note} | {seconds:.0f}"


def drift(steps: int, only: str = "", dtypes: tuple[str, ...] = ("float32", "float64")) -> None:
    print(f"steps={steps}, lr 1e-2, no drift control; CPU: {cpu_model()}, 1 thread")
    print()
    print("| manifold | dtype | optimizer | violation | loss start → end | SPD | s |")
    print("|---|---|---|---|---|---|---|")
    for name, m, shape in CASES:
        if only not in name:
            continue
        for dname in dtypes:
            dtype = getattr(torch, dname)
            for oname, cls, kw in (
                ("rsgd (m=0.9)", RiemannianSGD, {"momentum": 0.9}),
                ("radam", RiemannianAdam, {}),
            ):
                try:
                    row = _one_run(m, shape, dtype, cls, kw, steps)
                except Exception as err:  # report the failure in the table and go on
                    row = f"failed: {type(err).__name__}: {str(err)[:80]} | | |"
                print(f"| {name} | {dname} | {oname} | {row} |", flush=True)


def cost(repeats: int, inner: int) -> None:
    import geoopt

    cases = (
        (
            "SPD affine 64×8×8",
            SymmetricPositiveDefinite(),
            geoopt.SymmetricPositiveDefinite(),
            (64, 8, 8),
        ),
        (
            "Stereographic κ=−1 1000×16",
            Stereographic(-1.0),
            geoopt.Stereographic(k=torch.tensor(-1.0, dtype=torch.float64)),
            (1000, 16),
        ),
    )
    print(
        f"| manifold | ours (ms/step) | geoopt (ms/step) | ratio |  (CPU: {cpu_model()}, 1 thread)"
    )
    print("|---|---|---|---|")
    for name, ours_m, theirs_m, shape in cases:
        g = torch.Generator().manual_seed(0)
        start = ours_m.random(*shape, generator=g, dtype=torch.float64)
        target = ours_m.random(*shape, generator=g, dtype=torch.float64)
        ours_p = ManifoldParameter(start.clone(), ours_m)
        theirs_p = geoopt.ManifoldParameter(start.clone(), manifold=theirs_m)
        ours_o = RiemannianAdam([ours_p], lr=1e-3)
        theirs_o = geoopt.optim.RiemannianAdam([theirs_p], lr=1e-3)
        runs = {"ours": (ours_p, ours_o, ours_m), "geoopt": (theirs_p, theirs_o, ours_m)}
        times: dict[str, list[float]] = {"ours": [], "geoopt": []}
        for _ in range(repeats):
            for key, (p, opt, _m) in runs.items():  # interleaved round-robin
                p.grad = None
                (p - target).square().sum().backward()  # fixed gradient; only the step is timed
                t0 = time.perf_counter()
                for _ in range(inner):
                    opt.step()
                times[key].append((time.perf_counter() - t0) / inner * 1e3)
        a, b = statistics.median(times["ours"]), statistics.median(times["geoopt"])
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("drift", "cost"))
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--only", default="", help="drift: only the cases whose name has this")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"]
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.mode == "drift":
        drift(args.steps, args.only, tuple(args.dtypes))
    else:
        cost(args.repeats, args.inner)


if __name__ == "__main__":
    main()
