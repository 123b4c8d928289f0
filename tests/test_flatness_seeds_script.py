"""benchmarks/flatness_seeds.py on the quadratic task, whose Hessian is known: every run's λ_max
is the task's largest eigenvalue (1.0), whatever the optimizer, and the report has its tests."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_flatness_seeds_on_the_quadratic(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        script = importlib.import_module("flatness_seeds")
    out, raw = tmp_path / "flat.md", tmp_path / "flat.json"
    argv = ["--task", "quadratic", "--seeds", "0", "1", "2", "--epochs", "1", "--examples", "64"]
    argv += ["--spec", "sgd:lr=0.05,momentum=0.9", "--spec", "adam:lr=0.01"]
    assert script.main([*argv, "--out", str(out), "--json", str(raw)]) == 0
    data = json.loads(raw.read_text())
    for rows in data["rows"].values():
        assert [row["seed"] for row in rows] == [0, 1, 2]
        for row in rows:  # H's eigenvalues are log-spaced from 0.01 to 1
            assert row["lambda_max"] == pytest.approx(1.0, rel=1e-3)
    assert set(data["tests"]) == {"welch_t_p", "mann_whitney_p", "paired_t_p", "wilcoxon_p"}
    assert data["machine"]["threads"] == 1
    text = out.read_text()
    assert "| Mann–Whitney U |" in text and "| mean ± std |" in text
    with pytest.raises(SystemExit):
        script.main(["--spec", "sgd"])  # exactly two specs
