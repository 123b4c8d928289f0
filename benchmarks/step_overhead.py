"""Step-overhead benchmark: the cost of ``optimizer.step()`` for every registered optimizer.

Times ``step()`` on the parameter shapes of a ResNet-18 (CIFAR variant: 3x3 stem, 10 classes;
11,173,962 float32 parameters in 62 tensors at the default width) with gradients preset to fixed
random values, and reports each optimizer's median milliseconds per step and its ratio to
``torch.optim.SGD(lr=0.05, momentum=0.9)`` measured in the same run.

What is timed, per kind of optimizer (nothing is ever subtracted):

* Plain optimizers (no closure): ``K`` consecutive calls of ``optimizer.step()``; the preset
  gradients stay attached (``.grad`` values are set once; timing does not depend on them).
* Optimizers that need a closure or make several passes (``needs_closure`` or
  ``passes_per_step > 1``, e.g. SAM): ``optimizer.step(closure)`` where the closure runs no
  forward or backward. It re-attaches each parameter's gradient buffer if ``zero_grad`` dropped
  it and copies the preset gradient into it (a stand-in for the gradient write a backward pass
  would make), then returns a constant loss tensor. Everything the optimizer does around its
  closure calls is timed, and so are those calls; the row ``closure alone`` (added whenever a
  timed row uses the closure) times the closure by itself, so its cost can be read off. The
  JSON output records how many closure calls each step made.
* Noisy optimizers (Langevin samplers): timed like plain ones, noise generation included.
* Wrappers (``wraps_base``): built from their registry ``example`` (which names the base); the
  base's update is part of the step.
* Second-order optimizers: skipped (their closure needs a real autograd graph).
* Anchors (other libraries' implementations of a registered method, see :data:`ANCHORS`): the
  same, with that method's ``example`` hyperparameters mapped onto the library's arguments.
  ``posteriors`` is functional: its SGLD ``update`` computes the gradient itself with
  ``torch.func``, so its row uses a linear log posterior ``<g, theta>`` whose gradient is the
  preset ``g``; that row therefore also includes one dot product and one gradient write.

Measurement: every row owns its parameters, gradients and optimizer state. After ``W`` warm-up
steps per row, ``R`` repeats each time every row for a block of ``K`` steps
(``time.perf_counter``, garbage collector off), round-robin with the starting row rotated each
repeat so that load drift on a shared machine affects all rows alike. The table shows the median
and inter-quartile range of the ``R`` per-step times; ratio = median(row) / median(reference).
The JSON output also has the raw per-repeat times, the minimum, and the median of the
per-repeat paired ratios row/reference (more robust to drift).

Usage::

    python benchmarks/step_overhead.py [--quick] [--out FILE.md] [--json FILE]
        [--threads N] [--foreach {default,true,false}] [--repeats R] [--steps K]
        [--warmup W] [--width C] [--no-anchors]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import torchvalley
from torchvalley.registry import (
    OptimizerEntry,
    get_optimizer_entry,
    resolve_base_optimizer,
)

REFERENCE_LABEL = "reference: torch.optim.SGD(momentum=0.9)"
RATIO_COLUMN = "ratio to SGD-momentum"
TABLE_COLUMNS = (
    "optimizer",
    "family",
    "capabilities",
    "ms/step (median)",
    "IQR (ms)",
    RATIO_COLUMN,
)

# Full-size and --quick measurement settings: (warm-up steps, repeats, steps per repeat).
FULL_SETTINGS = (5, 21, 10)
QUICK_SETTINGS = (2, 5, 3)


# --------------------------------------------------------------------------------------------
# Workload: the parameter shapes of a ResNet-18
# --------------------------------------------------------------------------------------------


def resnet18_shapes(width: int = 64, num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of a CIFAR-style ResNet-18 (3x3 stem, no max-pool), in module order.

    Conv layers have no bias (they are followed by batch norm); every batch norm contributes a
    weight and a bias; the classifier is a linear layer with bias. At ``width=64`` and
    ``num_classes=10`` this is 11,173,962 parameters in 62 tensors. Smaller widths keep the
    tensor count and shrink the parameter count roughly by ``(width / 64) ** 2``.

    Args:
        width: channels of the first stage (the stages have ``width * (1, 2, 4, 8)``).
        num_classes: outputs of the final linear layer.

    Returns:
        The shapes, conv weights as ``(out, in, k, k)``.
    """
    if width < 1 or num_classes < 1:
        raise ValueError(f"width and num_classes must be positive, got {width}, {num_classes}")
    shapes: list[tuple[int, ...]] = []

    def conv_bn(c_out: int, c_in: int, k: int) -> None:
        shapes.append((c_out, c_in, k, k))
        shapes.extend([(c_out,), (c_out,)])

    conv_bn(width, 3, 3)
    c_in = width
    for stage, c_out in enumerate(width * m for m in (1, 2, 4, 8)):
        for block in range(2):
            downsample = block == 0 and stage > 0
            conv_bn(c_out, c_in, 3)
            conv_bn(c_out, c_out, 3)
            if downsample:
                conv_bn(c_out, c_in, 1)
            c_in = c_out
    shapes.extend([(num_classes, c_in), (num_classes,)])
    return shapes


def make_reference_tensors(
    shapes: Sequence[tuple[int, ...]], seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Fixed random parameter values (scale 0.05) and gradients (standard normal), float32."""
    generator = torch.Generator().manual_seed(seed)
    params = [0.05 * torch.randn(s, generator=generator) for s in shapes]
    grads = [torch.randn(s, generator=generator) for s in shapes]
    return params, grads


class Workset:
    """One row's own parameters and gradient buffers, plus the closure handed to its step.

    Args:
        ref_params: initial parameter values (cloned).
        ref_grads: the preset gradients; cloned into this row's buffers and read (not written)
            by :meth:`closure`.
    """

    def __init__(self, ref_params: Sequence[torch.Tensor], ref_grads: Sequence[torch.Tensor]):
        self.params = [torch.nn.Parameter(p.clone()) for p in ref_params]
        self.grads = [g.clone() for g in ref_grads]
        self.ref_grads = list(ref_grads)
        self.loss = torch.tensor(1.0)
        self.closure_calls = 0
        self.reattach()

    def reattach(self) -> None:
        """Point every ``.grad`` at this row's buffer again if something replaced or dropped it."""
        for p, g in zip(self.params, self.grads, strict=True):
            if p.grad is not g:
                p.grad = g

    def closure(self) -> torch.Tensor:
        """Stand-in for forward+backward: re-set the preset gradients, return a constant loss."""
        self.closure_calls += 1
        for p, g, ref in zip(self.params, self.grads, self.ref_grads, strict=True):
            if p.grad is not g:
                p.grad = g
            g.copy_(ref)
        return self.loss


# --------------------------------------------------------------------------------------------
# Anchors: other libraries' implementations of registered methods
# --------------------------------------------------------------------------------------------

StepFn = Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class Anchor:
    """Another library's implementation of a registered method, timed as a comparison row.

    Attributes:
        library: import name of the library (also its distribution name for the version).
        name: what the row calls it, e.g. ``"RiemannianSGD"``.
        build: ``build(workset, entry, foreach)`` returning a zero-argument step function;
            ``entry`` is the comparable registry entry, whose ``example`` gives the
            hyperparameters, and ``foreach`` is the forced flag (or ``None``).
        capabilities: short flags for the table.
        note: what makes it comparable, or where it differs.
    """

    library: str
    name: str
    build: Callable[[Workset, OptimizerEntry, bool | None], StepFn]
    capabilities: tuple[str, ...] = ()
    note: str = ""

    @property
    def label(self) -> str:
        """``library:Class``."""
        return f"{self.library}:{self.name}"


def _pick(example: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: example[k] for k in keys if k in example}


def _optimizer_step(opt: torch.optim.Optimizer, closure: Callable[[], Any] | None) -> StepFn:
    if closure is None:
        return opt.step
    return lambda: opt.step(closure)


def _import_quietly(module: str) -> Any:
    # geoopt and posteriors warn at import time (torch.jit.script deprecation, tensordict
    # FutureWarnings); they are not ours to fix, and pytest turns warnings into errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _geoopt_sgd(ws: Workset, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    optim = _import_quietly("geoopt.optim")
    keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    return _optimizer_step(optim.RiemannianSGD(ws.params, **_pick(entry.example, keys)), None)


def _geoopt_adam(ws: Workset, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    optim = _import_quietly("geoopt.optim")
    keys = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    return _optimizer_step(optim.RiemannianAdam(ws.params, **_pick(entry.example, keys)), None)


def _pytorch_optimizer_sgdw(ws: Workset, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    po = _import_quietly("pytorch_optimizer")
    kwargs = _pick(entry.example, ("lr", "momentum", "dampening", "weight_decay", "nesterov"))
    # weight_decouple=False: L2 added to the gradient, as torch.optim.SGD does.
    opt = po.SGDW(ws.params, weight_decouple=False, foreach=foreach, **kwargs)
    return _optimizer_step(opt, None)


def _pytorch_optimizer_sam(ws: Workset, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    po = _import_quietly("pytorch_optimizer")
    example = dict(entry.example)
    base = resolve_base_optimizer(example.pop("base_optimizer", "sgd"))
    wrapper_kwargs = _pick(example, ("rho", "adaptive"))
    # the keys the wrapper does not document are the base optimizer's
    base_kwargs = {k: v for k, v in example.items() if entry.hyperparameter(k) is None}
    if foreach is not None:
        base_kwargs["foreach"] = foreach
    opt = po.SAM(ws.params, base, **wrapper_kwargs, **base_kwargs)
    return _optimizer_step(opt, ws.closure)


def _posteriors_sgld(ws: Workset, entry: OptimizerEntry, foreach: bool | None) -> StepFn:
    sgld = _import_quietly("posteriors.sgmcmc.sgld")
    names = [f"p{i}" for i in range(len(ws.params))]
    grads = dict(zip(names, ws.ref_grads, strict=True))

    no_aux = torch.tensor([])

    def log_posterior(
        params: dict[str, torch.Tensor], batch: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # linear in the parameters, so its gradient is exactly the preset gradient
        value = torch.stack([torch.vdot(params[k].flatten(), grads[k].flatten()) for k in names])
        return value.sum(), no_aux

    kwargs = _pick(entry.example, ("lr", "temperature"))
    kwargs.setdefault("lr", 1e-3)
    transform = sgld.build(log_posterior, **kwargs)
    # posteriors' in-place update rebinds each leaf's ``.data`` to a freshly computed tensor (an
    # allocation per tensor and step, which is part of what this row times), so after the first
    # step the state no longer shares storage with ``ws.params``; only the timing matters here.
    state = transform.init({k: p.detach() for k, p in zip(names, ws.params, strict=True)})
    return lambda: transform.update(state, None, inplace=True)


# Keyed by registry name: a row is added only when that name is registered. Later issues add
# their comparable methods here (e.g. geoopt's RiemannianSGD/Adam for the Riemannian family).
# pytorch_optimizer's Adam, AdamW and SGD are re-exports of torch.optim's classes, so they are
# not listed (they would time the baseline itself); its SGDW with weight_decouple=False is its
# own implementation of SGD with momentum.
ANCHORS: dict[str, tuple[Anchor, ...]] = {
    "sgd": (
        Anchor(
            "geoopt",
            "RiemannianSGD",
            _geoopt_sgd,
            (),
            "Euclidean manifold, per-tensor loop with retraction + transport; its first "
            "momentum step differs from torch's (buffer starts at g and is updated at once)",
        ),
        Anchor(
            "pytorch_optimizer",
            "SGDW",
            _pytorch_optimizer_sgdw,
            ("foreach",),
            "weight_decouple=False (L2 like torch.optim.SGD)",
        ),
    ),
    "adam": (
        Anchor("geoopt", "RiemannianAdam", _geoopt_adam, (), "Euclidean manifold, per-tensor loop"),
    ),
    "sam": (
        Anchor(
            "pytorch_optimizer",
            "SAM",
            _pytorch_optimizer_sam,
            ("closure", "wrapper"),
            "base and rho from the sam example",
        ),
    ),
    "sgld": (
        Anchor(
            "posteriors",
            "sgmcmc.sgld",
            _posteriors_sgld,
            ("noisy", "functional"),
            "gradient via torch.func of a linear log posterior (one dot product + one write)",
        ),
    ),
}

ANCHOR_LIBRARIES = ("geoopt", "pytorch_optimizer", "posteriors")


def library_version(name: str) -> str | None:
    """Installed version of ``name``, or ``None`` when it is not installed (nothing imported)."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


# --------------------------------------------------------------------------------------------
# Rows and measurement
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One line of the table: what it times and what was measured."""

    label: str
    kind: str  # "reference", "registry", "anchor" or "closure"
    family: str
    capabilities: str
    registry_name: str | None = None
    note: str = ""
    status: str = "ok"  # "ok", "skipped" or "error"
    workset: Workset | None = None
    step: StepFn | None = None
    steps_run: int = 0
    times_ms: list[float] = dataclasses.field(default_factory=list)

    def run(self, steps: int) -> float:
        """Run ``steps`` steps; return the seconds they took."""
        assert self.step is not None and self.workset is not None
        step = self.step
        self.workset.reattach()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        elapsed = time.perf_counter() - start
        self.steps_run += steps
        return elapsed

    def fail(self, error: BaseException) -> None:
        """Mark the row as failed, keeping the error's text, and free its tensors."""
        self.status = "error"
        self.note = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        self.step = None
        self.workset = None


def _capability_text(entry: OptimizerEntry) -> str:
    flags = entry.capabilities.flags()
    if entry.capabilities.passes_per_step > 1:
        flags.append(f"{entry.capabilities.passes_per_step} passes")
    return ", ".join(flags) or "—"


def _uses_closure(entry: OptimizerEntry) -> bool:
    caps = entry.capabilities
    return caps.needs_closure or caps.passes_per_step > 1


def _foreach_applies(entry: OptimizerEntry, hyperparameters: Mapping[str, Any]) -> bool:
    """Whether a forced ``foreach`` flag can be passed to ``entry`` (or to its registered base)."""
    if entry.capabilities.foreach:
        return True
    if not entry.capabilities.wraps_base:
        return False
    spec = entry.hyperparameter("base_optimizer")
    base = hyperparameters.get("base_optimizer", spec.default if spec else None)
    if not isinstance(base, str):
        return False
    try:
        return get_optimizer_entry(base).capabilities.foreach
    except ValueError:
        return False


def _is_registered(entry: OptimizerEntry) -> bool:
    try:
        return get_optimizer_entry(entry.name) is entry
    except ValueError:
        return False


def build_rows(
    entries: Sequence[OptimizerEntry],
    ref_params: Sequence[torch.Tensor],
    ref_grads: Sequence[torch.Tensor],
    *,
    foreach: bool | None,
    anchors: bool,
) -> tuple[list[Row], list[str]]:
    """Build every row's optimizer on its own copy of the tensors.

    Returns:
        The rows (reference first, each registry entry followed by its anchors, the
        closure-alone row last when used) and note lines about anchors not shown.
    """

    def new_workset() -> Workset:
        return Workset(ref_params, ref_grads)

    ws = new_workset()
    rows = [
        Row(
            REFERENCE_LABEL,
            "reference",
            "baseline",
            "—",
            note="lr=0.05, foreach=None (torch's default: the per-tensor loop on CPU)",
            workset=ws,
            step=torch.optim.SGD(ws.params, lr=0.05, momentum=0.9).step,
        )
    ]
    notes: list[str] = []
    any_closure = False
    for entry in entries:
        row = Row(entry.name, "registry", entry.family, _capability_text(entry), entry.name)
        rows.append(row)
        if entry.capabilities.second_order:
            row.status, row.note = "skipped", "second-order: needs a real autograd graph"
        else:
            hyperparameters = dict(entry.example)
            if foreach is not None and _foreach_applies(entry, hyperparameters):
                hyperparameters["foreach"] = foreach
            try:
                row.workset = new_workset()
                if _is_registered(entry):
                    opt = torchvalley.create_optimizer(
                        entry.name, row.workset.params, **hyperparameters
                    )
                else:
                    opt = entry.factory(row.workset.params, **hyperparameters)
                closure = row.workset.closure if _uses_closure(entry) else None
                any_closure = any_closure or closure is not None
                row.step = _optimizer_step(opt, closure)
                row.note = ", ".join(f"{k}={v}" for k, v in hyperparameters.items())
            except Exception as error:
                row.fail(error)
        if not anchors:
            continue
        for anchor in ANCHORS.get(entry.name, ()):
            if library_version(anchor.library) is None:
                continue  # reported once in the header
            anchor_row = Row(
                f"{anchor.label} (comparable to {entry.name})",
                "anchor",
                entry.family,
                ", ".join(anchor.capabilities) or "—",
                entry.name,
                note=anchor.note,
            )
            rows.append(anchor_row)
            anchor_foreach = foreach if "foreach" in anchor.capabilities else None
            try:
                anchor_row.workset = new_workset()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", FutureWarning)
                    anchor_row.step = anchor.build(anchor_row.workset, entry, anchor_foreach)
                any_closure = any_closure or "closure" in anchor.capabilities
            except Exception as error:
                anchor_row.fail(error)
    if anchors:
        registered = {entry.name for entry in entries}
        waiting = [
            f"{anchor.label} ({name})"
            for name, group in ANCHORS.items()
            if name not in registered
            for anchor in group
        ]
        if waiting:
            notes.append(
                "Anchors waiting for their method to be registered: " + ", ".join(waiting) + "."
            )
    if any_closure:
        ws = new_workset()
        rows.append(
            Row(
                "closure alone (re-set preset gradients)",
                "closure",
                "—",
                "—",
                note="what each closure call costs inside the closure rows",
                workset=ws,
                step=ws.closure,
            )
        )
    return rows, notes


def measure(rows: Sequence[Row], *, warmup: int, repeats: int, steps: int) -> None:
    """Warm up, then time ``repeats`` blocks of ``steps`` steps per row, round-robin.

    Each repeat visits every live row once, starting one row further along than the previous
    repeat. A row whose step raises is marked as failed and dropped from later repeats.
    Per-step milliseconds are appended to ``row.times_ms``.
    """
    live = [row for row in rows if row.status == "ok"]
    for row in live:
        try:
            row.run(warmup)
        except Exception as error:
            row.fail(error)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for repeat in range(repeats):
            live = [row for row in rows if row.status == "ok"]
            if not live:
                break
            shift = repeat % len(live)
            for row in live[shift:] + live[:shift]:
                try:
                    elapsed = row.run(steps)
                except Exception as error:
                    row.fail(error)
                    continue
                row.times_ms.append(1e3 * elapsed / steps)
            print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    finally:
        if gc_was_enabled:
            gc.enable()


def summarize(row: Row, reference: Row) -> dict[str, Any]:
    """Statistics of one row (median, quartiles, IQR, min, ratios) for the table and JSON."""
    out: dict[str, Any] = {
        "label": row.label,
        "kind": row.kind,
        "registry_name": row.registry_name,
        "family": row.family,
        "capabilities": row.capabilities,
        "status": row.status,
        "note": row.note,
        "ms_per_step": row.times_ms,
    }
    if row.workset is not None and row.steps_run:
        calls = row.workset.closure_calls / row.steps_run
        out["closure_calls_per_step"] = calls if row.kind != "closure" else None
    times = row.times_ms
    if row.status != "ok" or not times:
        return out
    q1, median, q3 = _quartiles(times)
    out.update(median_ms=median, q1_ms=q1, q3_ms=q3, iqr_ms=q3 - q1, min_ms=min(times))
    ref = reference.times_ms
    if reference.status == "ok" and ref:
        out["ratio"] = median / statistics.median(ref)
        paired = [t / r for t, r in zip(times, ref, strict=True)]
        out["paired_ratio_median"] = statistics.median(paired)
    return out


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if value >= 100 else f"{value:.2f}" if value >= 10 else f"{value:.3f}"


def render_markdown(machine: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> str:
    """The report: a header block of machine facts, the table, and notes."""
    lines = [
        "# Optimizer step overhead",
        "",
        f"- date: {machine['date']}",
        f"- torch {machine['torch']} (CPU capability {machine['cpu_capability']}), "
        f"{machine['threads']} intra-op threads; Python {machine['python']}",
        f"- CPU: {machine['cpu_model']} ({machine['logical_cpus']} logical CPUs); "
        f"load average at start {machine['load_start']}, at end {machine['load_end']}",
        f"- workload: {machine['workload']}: {machine['param_count']:,} float32 parameters in "
        f"{machine['tensor_count']} tensors, gradients preset to fixed random values",
        f"- measurement: {machine['warmup']} warm-up steps per row, then "
        f"{machine['repeats']} repeats × {machine['steps']} steps, rows interleaved round-robin; "
        f"foreach: {machine['foreach']}",
        f"- anchors: {machine['anchor_libraries']}",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|",
    ]
    for r in results:
        if r["status"] == "ok" and "median_ms" in r:
            ms, iqr = _fmt_ms(r["median_ms"]), _fmt_ms(r["iqr_ms"])
            ratio = f"{r['ratio']:.2f}" if "ratio" in r else "—"
        else:
            ms, iqr, ratio = r["status"], "—", "—"
        cells = (r["label"], r["family"], r["capabilities"], ms, iqr, ratio)
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines.append("")
    lines.append(
        "Ratio = median ms/step of the row / median of the reference measured in the same run. "
        "Closure rows time `step(closure)` with a closure that only re-sets the preset gradients "
        "(no forward/backward); the `closure alone` row is that closure's own cost."
    )
    for r in results:
        if r["note"]:
            lines.append(
                f"- {r['label']}: {r['status'] + ': ' if r['status'] != 'ok' else ''}{r['note']}"
            )
    lines.extend(f"- {note}" for note in machine["notes"])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats and steps ({} warm-up, {}×{})".format(*QUICK_SETTINGS),
    )
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--foreach",
        choices=("default", "true", "false"),
        default="default",
        help="force the foreach flag of entries with the foreach capability",
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per row (R)")
    parser.add_argument("--steps", type=int, help="steps per timed repeat (K)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per row")
    parser.add_argument(
        "--width", type=int, default=64, help="ResNet-18 base width (64: 11.2M parameters; 4: ~44k)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the preset tensors")
    parser.add_argument("--no-anchors", action="store_true", help="skip other libraries' rows")
    args = parser.parse_args(argv)
    warmup, repeats, steps = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    args.warmup = warmup if args.warmup is None else args.warmup
    args.repeats = repeats if args.repeats is None else args.repeats
    args.steps = steps if args.steps is None else args.steps
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--repeats and --steps must be >= 1, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(
    argv: Sequence[str] | None = None, *, entries: Sequence[OptimizerEntry] | None = None
) -> int:
    """Run the benchmark; print the report, write ``--out``/``--json``.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
        entries: the optimizers to time (default: every registered one).

    Returns:
        0, or 1 when some row failed to build or step.
    """
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        return _run(args, entries)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, entries: Sequence[OptimizerEntry] | None) -> int:
    """:func:`main` after the thread count is set."""
    foreach = {"default": None, "true": True, "false": False}[args.foreach]
    entries = list(torchvalley.optimizer_entries() if entries is None else entries)
    shapes = resnet18_shapes(args.width)
    ref_params, ref_grads = make_reference_tensors(shapes, args.seed)

    versions = {lib: library_version(lib) for lib in ANCHOR_LIBRARIES}
    anchor_text = "; ".join(
        f"{lib} {v}" if v else f"{lib} not installed" for lib, v in versions.items()
    )
    if args.no_anchors:
        anchor_text = "skipped (--no-anchors)"
    load_start = _load_average()
    rows, notes = build_rows(
        entries, ref_params, ref_grads, foreach=foreach, anchors=not args.no_anchors
    )
    measure(rows, warmup=args.warmup, repeats=args.repeats, steps=args.steps)
    results = [summarize(row, rows[0]) for row in rows]

    machine = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": _load_average(),
        "workload": f"ResNet-18 parameter shapes (CIFAR variant, width {args.width})",
        "param_count": sum(p.numel() for p in ref_params),
        "tensor_count": len(ref_params),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "steps": args.steps,
        "foreach": args.foreach,
        "anchor_libraries": anchor_text,
        "anchor_versions": versions,
        "notes": notes,
    }
    report = render_markdown(machine, results)
    print(report, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rows": results}, indent=2) + "\n")
    return 1 if any(row.status == "error" for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
