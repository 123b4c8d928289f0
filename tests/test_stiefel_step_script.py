"""Smoke test of ``benchmarks/stiefel_step.py`` in a tiny configuration (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("geoopt")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stiefel_step.py"
# two tiny shapes (one batched), 1 warm-up step, 2 repeats x 2 steps, 30 drift steps
TINY = ["--shapes", "8x3", "2x6x2", "--warmup", "1", "--repeats", "2", "--steps", "2"]
TINY += ["--drift-steps", "30", "--stabilize", "10", "--threads", "1"]


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("stiefel_step_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_parse_shape(script: ModuleType) -> None:
    assert script.parse_shape("64x16") == (64, 16)
    assert script.parse_shape("8x64x16") == (8, 64, 16)
    for bad in ("16x64", "64", "ax3"):
        with pytest.raises(Exception, match="shape"):
            script.parse_shape(bad)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_row_is_timed_and_drifted(script: ModuleType, tmp_path: Path, dtype: str) -> None:
    out, raw = tmp_path / "stiefel.md", tmp_path / "stiefel.json"
    threads = torch.get_num_threads()
    argv = [*TINY, "--dtype", dtype, "--out", str(out), "--json", str(raw)]
    assert script.main(argv) == 0
    assert torch.get_num_threads() == threads

    text = out.read_text()
    assert "geoopt / this" in text
    assert "Equal drift" in text
    data = json.loads(raw.read_text())
    assert data["machine"]["dtype"] == dtype
    assert data["machine"]["drift_tol"] == script.DEFAULT_DRIFT_TOL[dtype]
    names = {
        "ours cayley",
        script.DRIFT_TOL_ROW,
        "ours cayley stabilize=10",
        "ours qr",
        script.GEOOPT_REFERENCE,
        script.GEOOPT_DEFAULT,
        "geoopt qr",
    }
    for shape in ("8x3", "2x6x2"):
        rows = {r["row"]: r for r in data["rows"] if r["shape"] == shape}
        assert set(rows) == names
        for r in rows.values():
            assert len(r["ms_per_step"]) == 2
            assert r["median_ms"] > 0
            assert r["geoopt_over_this"] > 0 and r["geoopt_svd_over_this"] > 0
            assert 0 <= r["final_violation"] < 1e-3
            assert r["final_loss"] == r["final_loss"]  # not NaN
        # stabilize=10 over 30 steps re-projects three times; the uncontrolled rows never
        assert rows["ours cayley stabilize=10"]["projections"] == 3
        assert rows["ours cayley"]["projections"] == 0
        assert rows[script.GEOOPT_REFERENCE]["projections"] is None
        # geoopt with projx before every step: one Cayley step away from the manifold
        assert rows[script.GEOOPT_REFERENCE]["final_violation"] < 1e-5
        assert f"| {shape} | ours qr |" in text
    assert {v["shape"] for v in data["verdicts"]} == {"8x3", "2x6x2"}
