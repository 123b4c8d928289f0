"""benchmarks/hessian_speed.py end to end on a tiny CNN (the equal-accuracy mode, no PyHessian):
the report is written, the default run meets the accuracy against the float64 reference."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hessian_speed.py"


def test_equal_accuracy_mode_smoke(tmp_path, monkeypatch):
    # The script imports its sibling _harness as `python benchmarks/hessian_speed.py` does.
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("hessian_speed_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    out, raw = tmp_path / "report.md", tmp_path / "report.json"
    status = module.main(
        ["--quick", "--no-pyhessian", "--repeats", "1", "--out", str(out), "--json", str(raw)]
    )
    assert status == 0
    payload = json.loads(raw.read_text())
    (ours,) = payload["results"]
    assert ours["label"] == "torchvalley default"
    assert ours["max_error"] <= 1e-3
    assert "torchvalley default" in out.read_text()


def test_starts_mode_smoke(tmp_path, monkeypatch):
    """``--mode starts --quick``: one workload, both start vectors within the accuracy."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("hessian_speed_script_starts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    out, raw = tmp_path / "starts.md", tmp_path / "starts.json"
    status = module.main(
        ["--mode", "starts", "--quick", "--repeats", "2", "--out", str(out), "--json", str(raw)]
    )
    assert status == 0
    (row,) = json.loads(raw.read_text())["results"]
    for start in ("gradient", "random"):
        assert len(row[start]["products"]) == 2
        assert row[start]["max_error"] <= 1e-3
    assert "gradient start" in out.read_text()
