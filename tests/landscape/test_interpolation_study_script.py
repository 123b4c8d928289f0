"""benchmarks/interpolation_study.py end to end at toy size: study, report, figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "interpolation_study.py"


def _load(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # the script imports its sibling _harness
    spec = importlib.util.spec_from_file_location("interpolation_study_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_study_and_report_smoke(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d", reason="MNIST-1D generator")
    pytest.importorskip("scipy", reason="Spearman / Welch tests")
    pytest.importorskip("matplotlib", reason="figures")
    module = _load(monkeypatch)
    raw, figures, md = tmp_path / "s.json", tmp_path / "fig", tmp_path / "s.md"
    threads = torch.get_num_threads()
    try:
        module.main(
            ["--part", "study", "--configs", "base", "shuffled", "--seeds", "0", "1",
             "--epochs", "1", "--json", str(raw)]
        )  # fmt: skip
        module.main(
            ["--part", "report", "--json", str(raw), "--figures", str(figures), "--md", str(md)]
        )
    finally:
        torch.set_num_threads(threads)
    runs = json.loads(raw.read_text())["study"]["runs"]
    assert [(r["config"], r["seed"]) for r in runs] == [
        ("base", 0), ("base", 1), ("shuffled", 0), ("shuffled", 1)
    ]  # fmt: skip
    for run in runs:
        # Every layer-wise path ends at the final network, like the full path (bit for bit);
        # the full path starts at the initialization, whose loss is log(10) give or take.
        ends = {layer["train_loss"][-1] for layer in run["layers"].values()}
        assert ends == {run["train_curve"][-1]}
        assert abs(run["train_curve"][0] - 2.303) < 0.1
        assert run["train_barrier"]["start_loss"] == run["train_curve"][0]
        assert set(run["layers"]) == {"fc1", "fc2", "fc3"}
    text = md.read_text()
    assert "| base | 2 |" in text and "| shuffled | 2 |" in text
    assert "| all | 4 |" in text
    for name in ("interpolation_factors.png", "interpolation_layerwise.png"):
        assert (figures / name).stat().st_size > 1000
