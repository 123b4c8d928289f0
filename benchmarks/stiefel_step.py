"""Stiefel step benchmark: torchvalley's RiemannianAdam on Stiefel vs geoopt's, time and drift.

For each shape (``64x16``, ``256x64``, and a batch such as ``8x64x16``, one parameter holding
8 points of St(64, 16)), one parameter starting from the same point ``X0`` (a random point of
the manifold, projected in the benchmark dtype) minimizes the small non-convex loss

    f(X) = ((X - T) ** 2).sum() + sin(3 X).sum()

(``T`` a fixed standard-normal target) with RiemannianAdam, ``lr`` 1e-2 and default betas/eps,
in six rows:

* ``ours cayley``: ``torchvalley.optim.RiemannianAdam`` on ``Stiefel("cayley")`` (Woodbury
  2p x 2p solve), no drift control;
* ``ours cayley drift_tol``: the same with ``drift_tol=τ`` (default 1e-6 in float32, about the
  violation geoopt's RAdam ends at, and 1e-14 in float64; ``--drift-tol``): after each step
  the cheap check ``max|XᵀX − I|`` runs and the point is re-projected (SVD) only when it
  exceeds τ;
* ``ours cayley stabilize=k``: the same with ``stabilize=k`` (re-project every k steps,
  ``--stabilize``, default 100);
* ``ours qr``: ``Stiefel("qr")``, no drift control;
* ``geoopt canonical``: ``geoopt.optim.RiemannianAdam`` on ``geoopt.Stiefel()`` (canonical
  metric, Cayley ``retr_transp`` through an n x n solve), as released: geoopt 0.5.1's step
  makes **no** projection (the per-step ``projx`` of geoopt's HEAD, PR #247, is not in the
  0.5.1 release), so this row drifts;
* ``geoopt canonical + SVD every step``: the same with ``p ← projx(p)`` (an SVD) at the start
  of every step, inside the timed ``step()``: exactly what geoopt's HEAD adds to the step, and
  the accuracy it buys. This is the reference of the equal-drift comparison. (geoopt's own
  ``stabilize=1`` cannot stand in for it: in geoopt 0.5.1 ``CanonicalStiefel.proju`` is
  ``u − x uᵀ x``, which doubles the ``xᵀu`` component of a tangent vector instead of keeping
  it, so re-projecting the moment after every step makes it grow about 1.8× per step and the
  run ends in NaN after ~47 steps on these problems);
* ``geoopt qr``: ``geoopt.EuclideanStiefel()`` (QR retraction), as released.

geoopt's canonical metric differs from torchvalley's embedded one, so the two Cayley rows follow
different trajectories of the same loss (the final loss is reported to show they do the same
job); the per-step work is comparable.

**Timing.** Each row owns its parameter and optimizer. A timed step is one ``optimizer.step()``
only: before it, outside the timed region, the row zeroes the gradient and runs the loss's
forward and backward at its current point (so the trajectory, and with it how often
``drift_tol`` fires, is the real one). After ``W`` warm-up steps per row, ``R`` repeats time a
block of ``K`` steps of every row (``time.perf_counter`` around each ``step()``, garbage
collector off), round-robin with the starting row rotated each repeat, as
``benchmarks/step_overhead.py`` does. Reported: median and IQR of the per-repeat ms/step,
``geoopt+SVD / this`` = median ms of ``geoopt canonical + SVD every step`` / this row's median
and ``geoopt / this`` the same for ``geoopt canonical`` (> 1: this row is faster); the JSON also
has the medians of the per-repeat paired ratios.

**Drift.** Separately, every row runs ``--drift-steps`` (default 10,000) steps from ``X0`` on a
fresh optimizer, and the final ``max|XᵀX − I|`` (computed in float64 from the stored values) and
loss are reported: the "equal drift" column that says at which accuracy each row runs. The
verdict per shape (goal ≥ 3×) compares the default, ``ours qr`` (``Stiefel()``, no drift
control; its drift must stay within ``--drift-tol``), with ``geoopt canonical + SVD every step``.

Usage::

    python benchmarks/stiefel_step.py [--threads N] [--dtype {float32,float64}]
        [--shapes 64x16 256x64 8x64x16] [--steps K] [--repeats R] [--warmup W]
        [--drift-steps N] [--drift-tol TAU] [--stabilize k] [--lr LR] [--seed S]
        [--out FILE.md] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import torchvalley
from torchvalley import ManifoldParameter
from torchvalley.bench.machine import cpu_model, load_average
from torchvalley.manifolds import Stiefel
from torchvalley.optim.riemannian import RiemannianAdam

DEFAULT_SHAPES = ("64x16", "256x64", "8x64x16")
# (warm-up steps, repeats, steps per repeat)
FULL_SETTINGS = (20, 21, 50)
DEFAULT_DRIFT_STEPS = 10_000
DEFAULT_DRIFT_TOL = {"float32": 1e-6, "float64": 1e-14}
DEFAULT_STABILIZE = 100
GEOOPT_REFERENCE = "geoopt canonical + SVD every step"
GEOOPT_DEFAULT = "geoopt canonical"
DRIFT_TOL_ROW = "ours cayley drift_tol"
DEFAULT_ROW = "ours qr"  # Stiefel()'s default retraction, no drift control: the verdict row
TABLE_COLUMNS = (
    "shape",
    "row",
    "ms/step (median)",
    "IQR (ms)",
    "geoopt+SVD / this",
    "geoopt / this",
    "final max|XᵀX−I|",
    "final loss",
    "projections",
)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"64x16"`` → ``(64, 16)``; ``"8x64x16"`` → ``(8, 64, 16)`` (a batch of 8 points)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r} (e.g. 64x16 or 8x64x16)") from None
    if len(shape) < 2 or any(s < 1 for s in shape) or shape[-2] < shape[-1]:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: need [batch x] n x p with n >= p")
    return shape


def _import_geoopt() -> Any:
    # geoopt warns at import time (torch.jit.script deprecation); not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("geoopt")


def geoopt_version() -> str | None:
    """geoopt's version, or None when it is not installed."""
    try:
        return importlib.metadata.version("geoopt")
    except importlib.metadata.PackageNotFoundError:
        return None


def violation(x: torch.Tensor) -> float:
    """``max|XᵀX − I|`` over the points of ``x``, in float64 from the stored values."""
    m = x.detach().to(torch.float64)
    eye = torch.eye(m.shape[-1], dtype=torch.float64)
    return float((m.transpose(-1, -2) @ m - eye).abs().max())


def loss_fn(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``((X - T) ** 2).sum() + sin(3 X).sum()``."""
    return ((x - target) ** 2).sum() + torch.sin(3 * x).sum()


def make_problem(
    shape: tuple[int, ...], dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The start ``X0`` (on St(n, p), projected in ``dtype``) and the target ``T``."""
    generator = torch.Generator().manual_seed(seed)
    x0 = Stiefel().random(*shape, generator=generator, dtype=torch.float64).to(dtype)
    x0 = Stiefel().projx(x0)
    target = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    return x0, target


@dataclass(frozen=True)
class Variant:
    """One row: how to build its parameter and optimizer from ``X0``."""

    name: str
    build: Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.optim.Optimizer]]
    note: str = ""
    geoopt: bool = False


def variants(args: argparse.Namespace, tol: float) -> list[Variant]:
    """The seven rows (the geoopt ones only when geoopt is importable)."""

    def ours(retraction: str, **drift: Any) -> Callable[..., Any]:
        def build(x0: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.optim.Optimizer]:
            p = ManifoldParameter(x0.clone(), Stiefel(retraction))
            return p, RiemannianAdam([p], lr=lr, **drift)

        return build

    def theirs(manifold_name: str, project_first: bool = False) -> Callable[..., Any]:
        def build(x0: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.optim.Optimizer]:
            geoopt = _import_geoopt()
            manifold = getattr(geoopt, manifold_name)()
            p = geoopt.ManifoldParameter(x0.clone(), manifold=manifold)
            factory = _geoopt_head_adam(geoopt) if project_first else geoopt.optim.RiemannianAdam
            return p, factory([p], lr=lr)

        return build

    rows = [
        Variant("ours cayley", ours("cayley"), "Stiefel('cayley'), no drift control"),
        Variant(DRIFT_TOL_ROW, ours("cayley", drift_tol=tol), f"drift_tol={tol:g}"),
        Variant(
            f"ours cayley stabilize={args.stabilize}",
            ours("cayley", stabilize=args.stabilize),
            f"projx every {args.stabilize} steps",
        ),
        Variant("ours qr", ours("qr"), "Stiefel('qr'), no drift control"),
    ]
    if geoopt_version() is not None:
        rows += [
            Variant(
                GEOOPT_DEFAULT,
                theirs("Stiefel"),
                "geoopt.Stiefel() (CanonicalStiefel, Cayley n x n solve); geoopt 0.5.1's step "
                "makes no projection",
                geoopt=True,
            ),
            Variant(
                GEOOPT_REFERENCE,
                theirs("Stiefel", project_first=True),
                "the same with p ← projx(p) (SVD) at the start of every step, as geoopt's HEAD "
                "(PR #247) does",
                geoopt=True,
            ),
            Variant(
                "geoopt qr",
                theirs("EuclideanStiefel"),
                "geoopt.EuclideanStiefel() (QR retraction), no projection",
                geoopt=True,
            ),
        ]
    return rows


def _geoopt_head_adam(geoopt: Any) -> type:
    """geoopt's RiemannianAdam with HEAD's ``p ← projx(p)`` at the start of every step."""

    class HeadRiemannianAdam(geoopt.optim.RiemannianAdam):  # type: ignore[misc, name-defined]
        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and isinstance(p, geoopt.ManifoldParameter):
                        p.copy_(p.manifold.projx(p))
            return super().step(closure)

    return HeadRiemannianAdam


def _count_projections(opt: torch.optim.Optimizer) -> Callable[[], int]:
    """Wrap ``opt._project`` (torchvalley's) with a counter; return a reader."""
    count = [0]
    project = getattr(opt, "_project", None)
    if project is None:
        return lambda: -1

    def counted(*a: Any, **k: Any) -> Any:
        count[0] += 1
        return project(*a, **k)

    opt._project = counted  # type: ignore[attr-defined]
    return lambda: count[0]


@dataclass
class Row:
    """One (shape, variant) pair of the timing run."""

    shape: str
    variant: Variant
    param: torch.Tensor
    opt: torch.optim.Optimizer
    target: torch.Tensor
    times_ms: list[float] = field(default_factory=list)

    def run(self, steps: int) -> float:
        """``steps`` steps; the seconds spent inside ``opt.step()`` (forward/backward excluded)."""
        inside = 0.0
        p, opt, target = self.param, self.opt, self.target
        for _ in range(steps):
            p.grad = None
            with torch.enable_grad():
                loss_fn(p, target).backward()
            start = time.perf_counter()
            opt.step()
            inside += time.perf_counter() - start
        return inside


def measure(rows: Sequence[Row], *, warmup: int, repeats: int, steps: int) -> None:
    """Warm up, then ``repeats`` interleaved blocks of ``steps`` steps per row (rotated start)."""
    for row in rows:
        row.run(warmup)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for repeat in range(repeats):
            shift = repeat % len(rows)
            for row in list(rows[shift:]) + list(rows[:shift]):
                row.times_ms.append(1e3 * row.run(steps) / steps)
            print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    finally:
        if gc_was_enabled:
            gc.enable()


def drift_run(
    variant: Variant, x0: torch.Tensor, target: torch.Tensor, lr: float, steps: int
) -> tuple[float, float, int, float]:
    """``steps`` steps of ``variant`` from ``x0``: final violation, loss, projections, seconds."""
    p, opt = variant.build(x0, lr)
    projections = _count_projections(opt)
    start = time.perf_counter()
    for _ in range(steps):
        p.grad = None
        with torch.enable_grad():
            loss_fn(p, target).backward()
        opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        loss = float(loss_fn(p, target))
    return violation(p), loss, projections(), seconds


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def _fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value >= 10 else f"{value:.3f}" if value >= 0.1 else f"{value:.4f}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time and drift every (shape, row); return the JSON payload."""
    dtype = getattr(torch, args.dtype)
    tol = args.drift_tol if args.drift_tol is not None else DEFAULT_DRIFT_TOL[args.dtype]
    chosen = variants(args, tol)
    load_start = load_average()
    problems = {}
    timing_rows: list[Row] = []
    for shape in args.shapes:
        label = "x".join(map(str, shape))
        x0, target = make_problem(shape, dtype, args.seed)
        problems[label] = (x0, target)
        for variant in chosen:
            p, opt = variant.build(x0, args.lr)
            timing_rows.append(Row(label, variant, p, opt, target))
    measure(timing_rows, warmup=args.warmup, repeats=args.repeats, steps=args.steps)

    results: list[dict[str, Any]] = []
    for row in timing_rows:
        q1, median, q3 = _quartiles(row.times_ms)
        results.append(
            {
                "shape": row.shape,
                "row": row.variant.name,
                "note": row.variant.note,
                "ms_per_step": row.times_ms,
                "median_ms": median,
                "q1_ms": q1,
                "q3_ms": q3,
                "iqr_ms": q3 - q1,
                "min_ms": min(row.times_ms),
            }
        )
    by_key = {(r["shape"], r["row"]): r for r in results}
    for r in results:
        for reference, key in ((GEOOPT_REFERENCE, "geoopt_svd"), (GEOOPT_DEFAULT, "geoopt")):
            ref = by_key.get((r["shape"], reference))
            if ref is not None:
                r[f"{key}_over_this"] = ref["median_ms"] / r["median_ms"]
                r[f"{key}_over_this_paired_median"] = statistics.median(
                    a / b for a, b in zip(ref["ms_per_step"], r["ms_per_step"], strict=True)
                )

    if args.drift_steps > 0:
        for r in results:
            variant = next(v for v in chosen if v.name == r["row"])
            x0, target = problems[r["shape"]]
            drift, loss, projections, seconds = drift_run(
                variant, x0, target, args.lr, args.drift_steps
            )
            r.update(
                final_violation=drift,
                final_loss=loss,
                projections=projections if projections >= 0 else None,
                drift_run_seconds=seconds,
            )
            print(f"drift {r['shape']} {r['row']}: {drift:.2e}", file=sys.stderr, flush=True)

    machine = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torchvalley": getattr(torchvalley, "__version__", "unknown"),
        "geoopt": geoopt_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": load_average(),
        "dtype": args.dtype,
        "lr": args.lr,
        "drift_tol": tol,
        "stabilize": args.stabilize,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "steps": args.steps,
        "drift_steps": args.drift_steps,
        "initial_violation": {k: violation(x0) for k, (x0, _) in problems.items()},
    }
    return {"machine": machine, "rows": results, "verdicts": verdicts(results, tol)}


def verdicts(results: Sequence[Mapping[str, Any]], tol: float) -> list[dict[str, Any]]:
    """Per shape: geoopt with an SVD every step / ours at the defaults (``Stiefel()`` = QR, no
    drift control), whose drift must also stay within ``tol`` (equal drift)."""
    out = []
    by_key = {(r["shape"], r["row"]): r for r in results}
    for shape in dict.fromkeys(r["shape"] for r in results):
        ours, ref = by_key.get((shape, DEFAULT_ROW)), by_key.get((shape, GEOOPT_REFERENCE))
        if ours is None or ref is None:
            continue
        item = {
            "shape": shape,
            "speedup": ours["geoopt_svd_over_this"],
            "speedup_paired_median": ours["geoopt_svd_over_this_paired_median"],
            "speedup_vs_geoopt_default": ours.get("geoopt_over_this"),
            "goal_speedup": 3.0,
        }
        if "final_violation" in ours:
            item["ours_violation"] = ours["final_violation"]
            item["geoopt_violation"] = ref["final_violation"]
            item["ours_within_tol"] = ours["final_violation"] <= tol
        item["goal_met"] = item["speedup"] >= 3.0 and item.get("ours_within_tol", True)
        out.append(item)
    return out


def render_markdown(payload: Mapping[str, Any]) -> str:
    """The report: machine facts, the table, the equal-drift verdicts, notes."""
    m = payload["machine"]
    lines = [
        f"# RiemannianAdam step on Stiefel ({m['dtype']}): torchvalley vs geoopt",
        "",
        f"- date: {m['date']}",
        f"- torch {m['torch']} (CPU capability {m['cpu_capability']}), {m['threads']} intra-op "
        f"threads; Python {m['python']}; geoopt {m['geoopt'] or 'not installed'}",
        f"- CPU: {m['cpu_model']} ({m['logical_cpus']} logical CPUs); load average at start "
        f"{m['load_start']}, at end {m['load_end']}",
        f"- loss ((X − T)²).sum() + sin(3X).sum(), lr {m['lr']:g}, betas (0.9, 0.999), eps 1e-8; "
        "same start X0 per shape (initial max|XᵀX−I|: "
        + ", ".join(f"{k} {v:.1e}" for k, v in m["initial_violation"].items())
        + ")",
        f"- timing: {m['warmup']} warm-up steps per row, then {m['repeats']} repeats × "
        f"{m['steps']} steps, rows (all shapes) interleaved round-robin; only `step()` is "
        "timed (forward+backward of each step excluded)",
        f"- drift: {m['drift_steps']:,} steps per row from X0 on a fresh optimizer; "
        f"drift_tol {m['drift_tol']:g}, stabilize {m['stabilize']}",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|",
    ]
    for r in payload["rows"]:
        ratio_svd = f"{r['geoopt_svd_over_this']:.2f}" if "geoopt_svd_over_this" in r else "—"
        ratio = f"{r['geoopt_over_this']:.2f}" if "geoopt_over_this" in r else "—"
        drift = f"{r['final_violation']:.1e}" if "final_violation" in r else "—"
        loss = f"{r['final_loss']:.4f}" if "final_loss" in r else "—"
        projections = r.get("projections")
        cells = (
            r["shape"],
            r["row"],
            _fmt_ms(r["median_ms"]),
            _fmt_ms(r["iqr_ms"]),
            ratio_svd,
            ratio,
            drift,
            loss,
            "—" if projections is None else str(projections),
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"geoopt+SVD / this = median ms/step of `{GEOOPT_REFERENCE}` / this row's median, "
        f"geoopt / this = the same for `{GEOOPT_DEFAULT}`, same run (> 1: this row is faster). "
        "final max|XᵀX−I| and final loss after the drift run (float64 evaluation of the stored "
        "values); projections = how many times torchvalley re-projected (SVD) during the drift "
        "run (geoopt's rows: —; the SVD row projects before every step)."
    )
    if payload["verdicts"]:
        lines += ["", f"## Equal drift: {GEOOPT_REFERENCE} vs ours at the defaults (QR)", ""]
        for v in payload["verdicts"]:
            text = (
                f"- {v['shape']}: {v['speedup']:.2f}× faster (paired median "
                f"{v['speedup_paired_median']:.2f}×; goal ≥ 3×: "
                f"{'met' if v['goal_met'] else 'NOT met'})"
            )
            if "ours_violation" in v:
                text += (
                    f"; final drift ours {v['ours_violation']:.1e} vs geoopt "
                    f"{v['geoopt_violation']:.1e}"
                )
            lines.append(text)
    else:
        lines += ["", "- geoopt not installed: no comparison rows."]
    lines.append("")
    for r in payload["rows"]:
        if r["shape"] == payload["rows"][0]["shape"]:
            lines.append(f"- {r['row']}: {r['note']}")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=[parse_shape(s) for s in DEFAULT_SHAPES],
        metavar="SHAPE",
        help="[batch x] n x p, e.g. 64x16 256x64 8x64x16 (default: %(default)s)",
    )
    parser.add_argument("--warmup", type=int, default=FULL_SETTINGS[0], help="warm-up steps")
    parser.add_argument("--repeats", type=int, default=FULL_SETTINGS[1], help="timed repeats")
    parser.add_argument("--steps", type=int, default=FULL_SETTINGS[2], help="steps per repeat")
    parser.add_argument(
        "--drift-steps", type=int, default=DEFAULT_DRIFT_STEPS, help="steps of the drift run"
    )
    parser.add_argument(
        "--drift-tol",
        type=float,
        help="drift_tol of the drift_tol row (default: 1e-6 float32, 1e-14 float64)",
    )
    parser.add_argument("--stabilize", type=int, default=DEFAULT_STABILIZE, help="period k")
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of X0 and T")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0 or args.drift_steps < 0:
        parser.error("--repeats and --steps must be >= 1, --warmup and --drift-steps >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.stabilize < 1:
        parser.error("--stabilize must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the report, write ``--out``/``--json``. Returns 0."""
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        payload = run(args)
    finally:
        torch.set_num_threads(threads_before)
    report = render_markdown(payload)
    print(report, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
