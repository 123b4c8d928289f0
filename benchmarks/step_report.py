"""The report of ``benchmarks/step_overhead.py``: table columns, parity ratios, markdown.

The parity ratios divide the rows of methods that must match a torch optimizer by that
optimizer's row from the same run (radam/adam, rsgd/sgd, ramsgrad/adam(amsgrad),
radagrad/adagrad when such rows exist, else listed as skipped), and geoopt's anchors over
torch's rows and over ours, as the ratio of medians and the median of per-repeat paired ratios.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from _harness import fmt_ms, machine_lines, paired_ratio_median

REFERENCE_LABEL = "reference: torch.optim.SGD(momentum=0.9)"
RATIO_COLUMN = "ratio to SGD-momentum"
OPTIMIZER_MS_COLUMN = "optimizer-side ms (closure excluded)"
OPTIMIZER_RATIO_COLUMN = "optimizer-side ratio"
TABLE_COLUMNS = (
    "optimizer",
    "family",
    "capabilities",
    "ms/step (median)",
    "IQR (ms)",
    RATIO_COLUMN,
    OPTIMIZER_MS_COLUMN,
    OPTIMIZER_RATIO_COLUMN,
)
TRAIN_REFERENCE_LABEL = "reference: torch.optim.SGD(momentum=0.9), 1 pass"
TRAIN_RATIO_COLUMN = "ratio to SGD-momentum step"
TRAIN_TABLE_COLUMNS = (
    "optimizer",
    "passes/step",
    "ms/step (median)",
    "IQR (ms)",
    TRAIN_RATIO_COLUMN,
    "paired ratio",
    "forward+backward ms/step",
    "optimizer-side ms/step",
)


# --------------------------------------------------------------------------------------------
# Parity ratios: a method's row against the row of the method it must match
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParityPair:
    """``numerator / denominator``, two row labels of the same run, with an optional goal."""

    numerator: str
    denominator: str
    goal: float | None = None
    text: str = ""


GEOOPT_RSGD = "geoopt:RiemannianSGD (comparable to rsgd)"
GEOOPT_RADAM = "geoopt:RiemannianAdam (comparable to radam)"
GEOOPT_RAMSGRAD = "geoopt:RiemannianAdam(amsgrad=True) (comparable to ramsgrad)"
# Denominators named here but never built by this script (no registry entry): their pairs are
# reported as skipped until such a row exists.
ADAM_AMSGRAD_LABEL = "adam_amsgrad"
ADAGRAD_LABEL = "adagrad"
PARITY_PAIRS: tuple[ParityPair, ...] = (
    ParityPair("radam", "adam", 1.05, "RAdam on plain tensors vs torch Adam"),
    ParityPair("ramsgrad", ADAM_AMSGRAD_LABEL, 1.05, "RAMSGrad vs torch Adam(amsgrad=True)"),
    ParityPair("rsgd", "sgd", 1.1, "RSGD vs torch SGD (momentum 0.9)"),
    ParityPair("radagrad", ADAGRAD_LABEL, None, "RAdagrad vs torch Adagrad"),
    ParityPair(GEOOPT_RADAM, "adam", None, "geoopt RAdam vs torch Adam"),
    ParityPair(GEOOPT_RAMSGRAD, ADAM_AMSGRAD_LABEL, None, "geoopt RAMSGrad vs torch AMSGrad"),
    ParityPair(GEOOPT_RSGD, "sgd", None, "geoopt RSGD vs torch SGD"),
    ParityPair(GEOOPT_RADAM, "radam", None, "geoopt RAdam vs ours"),
    ParityPair(GEOOPT_RAMSGRAD, "ramsgrad", None, "geoopt RAMSGrad vs ours"),
    ParityPair(GEOOPT_RSGD, "rsgd", None, "geoopt RSGD vs ours"),
)


def parity_ratios(
    results: Sequence[Mapping[str, Any]], pairs: Sequence[ParityPair] = PARITY_PAIRS
) -> list[dict[str, Any]]:
    """The ratio of medians and the median of per-repeat paired ratios of each pair of rows.

    Both come from this run's per-repeat times (``ms_per_step``): the repeats are interleaved,
    so repeat ``i`` of the two rows ran under the same load. A pair whose row is missing or
    did not run is returned with ``status`` ``"skipped"`` and the reason.
    """
    by_label = {r["label"]: r for r in results}
    out: list[dict[str, Any]] = []
    for pair in pairs:
        item: dict[str, Any] = {
            "numerator": pair.numerator,
            "denominator": pair.denominator,
            "goal": pair.goal,
            "text": pair.text,
        }
        missing = [
            label
            for label in (pair.numerator, pair.denominator)
            if label not in by_label or "median_ms" not in by_label[label]
        ]
        if missing:
            item["status"] = "skipped"
            item["reason"] = "no timed row " + " or ".join(f"'{m}'" for m in missing)
            out.append(item)
            continue
        num, den = by_label[pair.numerator], by_label[pair.denominator]
        item["status"] = "ok"
        item["ratio"] = num["median_ms"] / den["median_ms"]
        item["paired_ratio_median"] = paired_ratio_median(num["ms_per_step"], den["ms_per_step"])
        if pair.goal is not None:
            item["goal_met"] = item["ratio"] <= pair.goal
        out.append(item)
    return out


def render_parity(parity: Sequence[Mapping[str, Any]]) -> list[str]:
    """The "Parity ratios" section of the markdown report (empty when no pair was measured)."""
    measured = [p for p in parity if p["status"] == "ok"]
    if not measured:
        return []
    lines = [
        "",
        "## Parity ratios",
        "",
        "| ratio | ratio of medians | paired-ratio median | goal |",
        "|---|---|---|---|",
    ]
    for p in measured:
        goal = "—"
        if p["goal"] is not None:
            goal = f"≤ {p['goal']:.2f}: {'met' if p['goal_met'] else 'NOT met'}"
        lines.append(
            f"| {p['numerator']} / {p['denominator']} | {p['ratio']:.3f} | "
            f"{p['paired_ratio_median']:.3f} | {goal} |"
        )
    lines.append("")
    lines.append(
        "Ratio of medians = median ms/step of the first row / that of the second, both from "
        "this run; paired-ratio median = median over repeats of first / second within the "
        "same repeat (more robust to load drift). Goal met when the ratio of medians is at "
        "most the goal."
    )
    lines.extend(
        f"- skipped {p['numerator']} / {p['denominator']}: {p['reason']}"
        for p in parity
        if p["status"] != "ok"
    )
    return lines


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt_ratio(result: Mapping[str, Any], key: str) -> str:
    return f"{result[key]:.2f}" if key in result else "—"


def render_markdown(machine: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> str:
    """The report: a header block of machine facts, the table, and notes."""
    lines = [
        "# Optimizer step overhead",
        "",
        *machine_lines(machine),
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
            ms, iqr = fmt_ms(r["median_ms"]), fmt_ms(r["iqr_ms"])
            own = fmt_ms(r.get("optimizer_median_ms"))
        else:
            ms, iqr, own = r["status"], "—", "—"
        cells = (
            r["label"],
            r["family"],
            r["capabilities"],
            ms,
            iqr,
            _fmt_ratio(r, "ratio"),
            own,
            _fmt_ratio(r, "optimizer_ratio"),
        )
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines.append("")
    lines.append(
        "Ratio = median ms/step of the row / median of the reference measured in the same run. "
        "Closure rows time `step(closure)` with a closure that only re-sets the preset gradients "
        "(no forward/backward); the `closure alone` row is that closure's own cost. "
        "Optimizer-side = the same timed blocks minus the time measured inside the closure "
        "calls (for SAM: `first_step` + `second_step`, base update included); for rows without "
        "a closure it equals ms/step. Optimizer-side ratio = its median / the reference's."
    )
    for r in results:
        if r["note"]:
            lines.append(
                f"- {r['label']}: {r['status'] + ': ' if r['status'] != 'ok' else ''}{r['note']}"
            )
    lines.extend(f"- {note}" for note in machine["notes"])
    lines.extend(render_parity(parity_ratios(results)))
    return "\n".join(lines) + "\n"


def render_training_markdown(
    machine: Mapping[str, Any], results: Sequence[Mapping[str, Any]]
) -> str:
    """The ``--training-step`` report."""
    lines = [
        "# Full training step: closure optimizers vs SGD-momentum",
        "",
        *machine_lines(machine),
        f"- workload: {machine['workload']}",
        f"- measurement: {machine['warmup']} warm-up steps per row, then "
        f"{machine['repeats']} repeats × {machine['steps']} training steps, rows interleaved "
        "round-robin, each row on its own copy of the model (same initial weights)",
        f"- anchors: {machine['anchor_libraries']}",
        "",
        "| " + " | ".join(TRAIN_TABLE_COLUMNS) + " |",
        "|" + "|".join("---" for _ in TRAIN_TABLE_COLUMNS) + "|",
    ]
    for r in results:
        if r["status"] == "ok" and "median_ms" in r:
            ms, iqr = fmt_ms(r["median_ms"]), fmt_ms(r["iqr_ms"])
            inside = fmt_ms(r["closure_median_ms"])
            own = fmt_ms(r.get("optimizer_median_ms"))
        else:
            ms, iqr, inside, own = r["status"], "—", "—", "—"
        cells = (
            r["label"],
            r["passes_per_step"],
            ms,
            iqr,
            _fmt_ratio(r, "ratio"),
            _fmt_ratio(r, "paired_ratio_median"),
            inside,
            own,
        )
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines.append("")
    lines.append(
        "A training step = move to the next fixed batch, then `closure(); step()` (reference, "
        "plain optimizers) or `step(closure)` (closure optimizers); the closure zeroes the "
        "gradients and runs forward, cross-entropy and backward. Ratio = median ms/step of the "
        "row / median of the reference in the same run; paired ratio = median over repeats of "
        "row / reference within the same repeat (more robust to load drift). "
        "Forward+backward = time measured inside the closure calls; optimizer-side = the rest "
        "of the step (medians over repeats, so the two need not add up exactly to ms/step)."
    )
    for r in results:
        if r["note"]:
            lines.append(
                f"- {r['label']}: {r['status'] + ': ' if r['status'] != 'ok' else ''}{r['note']}"
            )
    lines.extend(f"- {note}" for note in machine["notes"])
    return "\n".join(lines) + "\n"
