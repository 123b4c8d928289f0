"""End-to-end smoke runs of benchmarks/directional_statistics.py and benchmarks/fdr_hessian.py
on the digits MLP at a tiny scale (slow: they train networks). The numbers they print are
checked against what the scripts claim to compute: the per-checkpoint fields exist, κ is above
0 and R̄ in [0, 1]; the FDR curvature estimates are positive and of the size of λ_max."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]


def _script(name: str):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        return importlib.import_module(name)


def test_directional_statistics_smoke(tmp_path: Path) -> None:
    script = _script("directional_statistics")
    out, raw, figures = tmp_path / "d.md", tmp_path / "d.json", tmp_path / "fig"
    argv = ["--tasks", "digits_mlp", "--batch-sizes", "32", "64", "--epochs", "3"]
    argv += ["--seeds", "0", "1", "--probes", "6", "--threads", str(torch.get_num_threads())]
    assert script.main([*argv, "--out", str(out), "--json", str(raw)]) == 0
    runs = json.loads(raw.read_text())["runs"]
    assert len(runs) == 4 and all(len(r["checkpoints"]) == 4 for r in runs)
    for run in runs:
        for row in run["checkpoints"]:
            assert row["kappa"] > 0 and 0 <= row["rbar"] <= 1 and row["gs"] > 0
            assert 0 < row["gs_rel"] < 1.5 and row["ns"] >= 0
    merged = tmp_path / "m.md"
    argv = ["--merge", str(raw), "--figure-dir", str(figures), "--out", str(merged)]
    assert script.main(argv) == 0
    assert (figures / "directional_statistics_digits_mlp.png").exists()
    assert "| digits_mlp | 32 |" in merged.read_text() and "Pooled over all 4 runs" in (
        merged.read_text()
    )


def test_fdr_hessian_smoke(tmp_path: Path) -> None:
    script = _script("fdr_hessian")
    out, raw = tmp_path / "f.md", tmp_path / "f.json"
    argv = ["--tasks", "digits_mlp", "--settings", "momentum", "--seeds", "0", "1"]
    argv += ["--burn-in", "2", "--sample", "4", "--probes", "3", "--lanczos-iter", "8"]
    argv += ["--n-batches", "5", "--sweep-lrs", "--threads", str(torch.get_num_threads())]
    assert script.main([*argv, "--out", str(out), "--json", str(raw)]) == 0
    rows = json.loads(raw.read_text())["rows"]
    assert len(rows) == 2
    for row in rows:
        assert 0 < row["h_direct"] < 2 * row["lambda_max"]  # H moves a little over the window
        assert row["h_kinetic"] > 0 and row["samples"] == 4 * 44 // 5
    assert "| digits_mlp | (0.02, 0.9, 0.01) |" in out.read_text()
