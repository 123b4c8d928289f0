"""Smoke test of ``benchmarks/step_overhead.py`` in a tiny configuration (no timing asserts)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import torchvalley
from torchvalley.registry import (
    Capabilities,
    Hyperparameter,
    OptimizerEntry,
    resolve_base_optimizer,
)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# ~45k parameters in 62 tensors, 1 warm-up step, 2 repeats x 2 steps, one thread
TINY = ["--width", "4", "--warmup", "1", "--repeats", "2", "--steps", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    # The scripts import their siblings (_harness, anchors) as `python benchmarks/x.py` does:
    # with benchmarks/ first on sys.path.
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        yield importlib.import_module("step_overhead")


def _table(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and {first cell: cells} of the markdown table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return header, rows


def test_resnet18_shapes(script: ModuleType) -> None:
    shapes = script.resnet18_shapes()
    assert len(shapes) == 62
    assert sum(torch.Size(s).numel() for s in shapes) == 11_173_962


@pytest.mark.parametrize("width", [4, 64])
def test_resnet18_module_matches_the_shapes(script: ModuleType, width: int) -> None:
    with torch.device("meta"):
        model = script.CifarResNet18(width)
    assert [tuple(p.shape) for p in model.parameters()] == script.resnet18_shapes(width)


def test_model_owns_the_benchmark_parameters(script: ModuleType) -> None:
    from torchvalley.optim.sam import normalization_parameters

    params, grads = script.make_reference_tensors(script.resnet18_shapes(4))
    ws = script.Workset(params, grads, width=4)
    assert ws.model is not None and ws.model.training
    owned = list(ws.model.parameters())
    assert len(owned) == len(ws.params)
    assert all(a is b for a, b in zip(owned, ws.params, strict=True))
    norm = normalization_parameters(ws.model)
    # 20 BatchNorm layers (stem, 2 per block, 3 shortcuts), weight and bias each
    assert len(norm) == 40
    assert all(p.dim() == 1 for p in norm)
    for buffer in ws.model.buffers():
        assert buffer.device.type == "cpu"
    # a real forward pass runs on the bound parameters
    out = ws.model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="parameters"):
        script.bind_parameters(script.CifarResNet18(4), ws.params[:-1])


def test_every_registered_optimizer_gets_a_row(script: ModuleType, tmp_path: Path) -> None:
    out, raw = tmp_path / "step.md", tmp_path / "step.json"
    threads = torch.get_num_threads()
    assert script.main([*TINY, "--out", str(out), "--json", str(raw)]) == 0
    assert torch.get_num_threads() == threads

    header, rows = _table(out.read_text())
    assert header[0] == "optimizer"
    assert script.RATIO_COLUMN in header
    assert script.REFERENCE_LABEL in rows
    # Entries a stand-in closure cannot drive (second-order, or needing the real loss) get a
    # row marked skipped; every other entry is timed.
    untimed = {
        e.name
        for e in torchvalley.optimizer_entries()
        if e.capabilities.second_order or e.capabilities.needs_real_loss
    }
    for name in torchvalley.list_optimizers():
        assert name in rows, name
        timed = rows[name][header.index(script.RATIO_COLUMN)] != "—"
        assert timed != (name in untimed), name

    assert script.OPTIMIZER_RATIO_COLUMN in header
    for name in set(torchvalley.list_optimizers()) - untimed:
        assert rows[name][header.index(script.OPTIMIZER_RATIO_COLUMN)] != "—"

    data = json.loads(raw.read_text())
    assert data["machine"]["tensor_count"] == 62
    assert 40_000 < data["machine"]["param_count"] < 60_000
    by_label = {row["label"]: row for row in data["rows"]}
    for row in data["rows"]:
        if row["label"] in untimed:
            assert row["status"] == "skipped", row
            continue
        assert row["status"] == "ok", row
        assert len(row["ms_per_step"]) == 2
        assert len(row["closure_ms_per_step"]) == 2
        assert row["ratio"] > 0
        if row["kind"] == "closure":
            assert "optimizer_ratio" not in row
        else:
            assert 0 < row["optimizer_median_ms"] <= row["median_ms"]
            assert row["optimizer_ratio"] > 0
    for name in ("sam", "asam", "fisher_sam", "sam_on", "monge_sam"):
        if name in by_label:
            assert by_label[name]["closure_calls_per_step"] == 2
            assert "model=" in by_label[name]["note"]
            assert all(c > 0 for c in by_label[name]["closure_ms_per_step"])
    assert all(c == 0 for c in by_label[script.REFERENCE_LABEL]["closure_ms_per_step"])


class _TwoPass(torch.optim.Optimizer):
    """SAM-shaped stand-in: perturb along the gradient, call the closure, restore, base step."""

    def __init__(self, params: Any, base_optimizer: str = "sgd", rho: float = 0.05, **base: Any):
        super().__init__(params, {"rho": rho})
        self.base = resolve_base_optimizer(base_optimizer)(self.param_groups, **base)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if closure is None:
            raise RuntimeError("this optimizer needs a closure")
        saved = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    saved.append((p, p.clone()))
                    p.add_(p.grad, alpha=group["rho"])
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        for p, old in saved:
            p.copy_(old)
        self.base.step()
        return loss


def test_closure_and_future_anchor_rows(script: ModuleType, tmp_path: Path) -> None:
    """Unregistered stand-ins named like future methods exercise the closure and anchor paths."""
    fake_sam = OptimizerEntry(
        name="sam",
        factory=_TwoPass,
        capabilities=Capabilities(needs_closure=True, passes_per_step=2, wraps_base=True),
        hyperparameters=(
            Hyperparameter("base_optimizer", "optimizer", "sgd"),
            Hyperparameter("rho", "non_negative", 0.05),
        ),
        summary="stand-in",
        family="sharpness-aware",
        example={"base_optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "rho": 0.05},
    )
    fake_sgld = OptimizerEntry(
        name="sgld",
        factory=torch.optim.SGD,
        capabilities=Capabilities(noisy=True),
        hyperparameters=(Hyperparameter("lr", "non_negative", 1e-3),),
        summary="stand-in",
        family="langevin",
        example={"lr": 1e-4},
    )
    raw = tmp_path / "step.json"
    code = script.main(
        [*TINY, "--foreach", "true", "--json", str(raw)], entries=[fake_sam, fake_sgld]
    )
    assert code == 0
    rows = {row["label"]: row for row in json.loads(raw.read_text())["rows"]}
    assert rows["sam"]["closure_calls_per_step"] == 1
    assert "closure alone (re-set preset gradients)" in rows
    expected = {
        "pytorch_optimizer": "pytorch_optimizer:SAM (comparable to sam)",
        "posteriors": "posteriors:sgmcmc.sgld (comparable to sgld)",
    }
    for library, label in expected.items():
        if script.library_version(library) is not None:
            assert rows[label]["status"] == "ok", rows[label]
    for row in rows.values():
        assert row["status"] == "ok", row


def test_missing_anchor_library_is_a_note(
    script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(script, "library_version", lambda name: None)
    out = tmp_path / "step.md"
    assert script.main([*TINY, "--out", str(out)], entries=[]) == 0
    text = out.read_text()
    for library in script.ANCHOR_LIBRARIES:
        assert f"{library} not installed" in text
    _, rows = _table(text)
    assert list(rows) == [script.REFERENCE_LABEL]


def test_training_step_mode(script: ModuleType, tmp_path: Path) -> None:
    out, raw = tmp_path / "train.md", tmp_path / "train.json"
    argv = [
        "--training-step",
        "--train-batch",
        "8",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--steps",
        "1",
        "--threads",
        "1",
    ]
    assert script.main([*argv, "--out", str(out), "--json", str(raw)]) == 0
    header, rows = _table(out.read_text())
    assert script.TRAIN_RATIO_COLUMN in header
    assert script.TRAIN_REFERENCE_LABEL in rows
    closure_names = [
        entry.name
        for entry in torchvalley.optimizer_entries()
        if entry.capabilities.needs_closure and not entry.capabilities.second_order
    ]
    for name in closure_names:
        assert rows[name][header.index(script.TRAIN_RATIO_COLUMN)] != "—"
    data = json.loads(raw.read_text())
    assert data["machine"]["mode"] == "training-step"
    assert data["machine"]["param_count"] == 9_802
    by_label = {row["label"]: row for row in data["rows"]}
    assert by_label[script.TRAIN_REFERENCE_LABEL]["closure_calls_per_step"] == 1
    for row in data["rows"]:
        assert row["status"] == "ok", row
        assert row["closure_median_ms"] > 0
        assert row["optimizer_median_ms"] > 0
    for name in closure_names:
        calls, passes = by_label[name]["closure_calls_per_step"], by_label[name]["passes_per_step"]
        if float(passes).is_integer():
            assert calls == passes
        else:  # an average (LookSAM: 1 + 1/k, DiMS: its Newton iterations) within a pass
            assert abs(calls - passes) <= 1, (name, calls, passes)


def test_training_step_resnet_and_chosen_optimizers(script: ModuleType, tmp_path: Path) -> None:
    raw = tmp_path / "train.json"
    argv = ["--training-step", "--train-model", "resnet18", "--width", "4", "--train-batch", "2"]
    argv += ["--quick", "--threads", "1", "--no-anchors", "--json", str(raw)]
    assert script.main([*argv, "--train-optimizers", "sgd", "sam_on"]) == 0
    data = json.loads(raw.read_text())
    assert [row["label"] for row in data["rows"]] == [script.TRAIN_REFERENCE_LABEL, "sgd", "sam_on"]
    assert data["machine"]["tensor_count"] == 62
    assert all(row["status"] == "ok" for row in data["rows"])
    with pytest.raises(ValueError, match="no_such"):
        script.main([*argv, "--train-optimizers", "no_such"])


def test_parity_ratios_section(script: ModuleType, tmp_path: Path) -> None:
    out, raw = tmp_path / "step.md", tmp_path / "step.json"
    names = ["sgd", "adam", "rsgd", "radam", "ramsgrad", "radagrad"]
    assert script.main([*TINY, "--optimizers", *names, "--out", str(out), "--json", str(raw)]) == 0
    text = out.read_text()
    assert "## Parity ratios" in text
    _, rows = _table(text.split("## Parity ratios")[0])
    assert set(rows) >= {script.REFERENCE_LABEL, *names}
    assert "sam" not in rows  # --optimizers restricts the rows
    parity_lines = [line for line in text.split("## Parity ratios")[1].splitlines()]
    assert any(line.startswith("| radam / adam |") for line in parity_lines)
    assert any(line.startswith("| rsgd / sgd |") for line in parity_lines)
    # no torch Adam(amsgrad=True) or Adagrad row: those pairs are listed as skipped
    assert f"- skipped ramsgrad / {script.ADAM_AMSGRAD_LABEL}" in text
    assert f"- skipped radagrad / {script.ADAGRAD_LABEL}" in text

    parity = {(p["numerator"], p["denominator"]): p for p in json.loads(raw.read_text())["parity"]}
    for pair in [("radam", "adam"), ("rsgd", "sgd")]:
        item = parity[pair]
        assert item["status"] == "ok"
        assert item["ratio"] > 0 and item["paired_ratio_median"] > 0
        assert isinstance(item["goal_met"], bool)
    assert parity[("radagrad", script.ADAGRAD_LABEL)]["status"] == "skipped"
    geoopt_pairs = [(script.GEOOPT_RADAM, "adam"), (script.GEOOPT_RSGD, "sgd")]
    geoopt_pairs += [(script.GEOOPT_RAMSGRAD, "ramsgrad")]
    for pair in geoopt_pairs:
        expected = "ok" if script.library_version("geoopt") is not None else "skipped"
        assert parity[pair]["status"] == expected, parity[pair]
        if expected == "ok":
            assert f"| {pair[0]} / {pair[1]} |" in text
    with pytest.raises(ValueError, match="--optimizers: no_such"):
        script.main([*TINY, "--optimizers", "no_such"])


def test_spec_rows(script: ModuleType, tmp_path: Path) -> None:
    """`--row SPEC` adds a variant labelled by its canonical spec; alone it times only itself."""
    raw = tmp_path / "step.json"
    argv = [*TINY, "--no-anchors", "--json", str(raw), "--row", "sam:swap_storage=true"]
    assert script.main(argv) == 0
    rows = {row["label"]: row for row in json.loads(raw.read_text())["rows"]}
    label = "sam:swap_storage=True"
    assert set(rows) == {script.REFERENCE_LABEL, label, "closure alone (re-set preset gradients)"}
    assert rows[label]["status"] == "ok"
    assert rows[label]["registry_name"] == "sam"
    assert "swap_storage=True" in rows[label]["note"] and "model=" in rows[label]["note"]
    assert rows[label]["closure_calls_per_step"] == 2

    # --optimizers takes names and specs together, in that order
    assert (
        script.main(
            [*TINY, "--no-anchors", "--json", str(raw), "--optimizers", "sgd", "sgd:momentum=0.5"]
        )
        == 0
    )
    labels = [row["label"] for row in json.loads(raw.read_text())["rows"]]
    assert labels == [script.REFERENCE_LABEL, "sgd", "sgd:momentum=0.5"]
    with pytest.raises(ValueError, match="rhoo"):
        script.main([*TINY, "--row", "sam:rhoo=0.1"])
