"""Smoke test of ``benchmarks/manifold_drift.py`` with a few steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "manifold_drift.py"


def test_manifold_drift_script_writes_a_row_per_case(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("manifold_drift_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        assert module.main(["--steps", "3", "--out", str(tmp_path / "drift.md")]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in (tmp_path / "drift.md").read_text().splitlines() if "| " in line]
    assert len(rows) == 1 + len(module.CASES) * len(module.OPTIMIZERS)  # header + one per case
    assert all("nan" not in row for row in rows)
