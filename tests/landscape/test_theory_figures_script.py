"""benchmarks/theory_figures.py at a tiny size: it runs, writes its figures, report and JSON, and
its numbers show what the two theorems predict (oracles: the theorems' scalings)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the script draws figures")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "theory_figures.py"


def _load():
    spec = importlib.util.spec_from_file_location("theory_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_theory_figures_small_run(tmp_path: Path) -> None:
    module = _load()
    out, raw = tmp_path / "report.md", tmp_path / "raw.json"
    argv = [
        "all",
        "--seeds", "2",
        "--widths", "64", "4096",
        "--points", "8",
        "--dim", "6",
        "--ntk-steps", "300",
        "--align-points", "20",
        "--align-dim", "4",
        "--depth", "3",
        "--align-width", "6",
        "--align-steps", "150",
        "--init", "0.5",
        "--figures", str(tmp_path),
        "--out", str(out),
        "--json", str(raw),
    ]  # fmt: skip
    assert module.main(argv) == 0
    assert (tmp_path / "theory_ntk_width.png").stat().st_size > 10_000
    assert (tmp_path / "theory_alignment.png").stat().st_size > 10_000
    report = out.read_text()
    assert "### Width (Du et al.)" in report and "### Alignment (Ji & Telgarsky)" in report
    payload = json.loads(raw.read_text())

    width = payload["width"]
    small, large = width["runs"]["64"], width["runs"]["4096"]
    for rows in (small, large):
        assert len(rows) == 2
        for row in rows:
            assert row["loss_end"] < 1e-3 * row["loss_start"]  # converges at both widths
    # Du et al.: the movement relative to ‖W(0)‖_F ≈ √(md) falls like 1/√m. 64× the width gives
    # 1/8 of the movement; allow a factor 2 either way for 2 seeds and finite width.
    movement = [module._stat(rows, "relative_movement")[0] for rows in (small, large)]
    ratio = movement[1] / movement[0]
    assert 1 / 16 < ratio < 1 / 4, ratio
    # λ_min(H(0)) approaches λ₀ as m grows: closer at m = 4096 than the spread at m = 64 allows.
    lambda0 = width["lambda0"]
    gap_large = abs(module._stat(large, "lambda_min_start")[0] - lambda0)
    assert gap_large < 0.1 * lambda0
    assert math.isclose(width["lr"], 1.0 / width["lambda_max_h_inf"])

    alignment = payload["alignment"]
    assert alignment["dims"] == [4, 6, 6, 1]
    for histories in alignment["runs"].values():
        assert len(histories) == 2
        for history in histories:
            assert history[-1]["loss"] < history[0]["loss"]
    # Ji & Telgarsky: the linear network's layers move towards rank one and alignment.
    for history in alignment["runs"]["linear"]:
        start, end = history[0], history[-1]
        assert min(end["ratios"]) > min(start["ratios"]) + 0.05
        assert min(end["adjacent"]) > 0.9
        assert end["predictor_alignment"] > 0.9
