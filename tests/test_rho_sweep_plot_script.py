"""Smoke test of ``benchmarks/rho_sweep_plot.py`` on a small synthetic store."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from torchvalley.bench.specs import OptimizerSpec
from torchvalley.bench.store import Store

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rho_sweep_plot.py"


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("rho_sweep_plot_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _add(store: Store, text: str, seed: int, accuracy: float) -> None:
    spec = OptimizerSpec.parse(text)
    run_id = store.begin_run(
        task="mnist1d_cnn",
        optimizer=spec.name,
        spec_label=spec.label,
        hyperparameters=spec.hyperparameters,
        seed=seed,
        data_seed=42,
        epochs=1,
        batch_size=100,
        metric_name="accuracy",
        higher_is_better=True,
        target=0.9,
    )
    assert run_id is not None
    store.finish_run(run_id, "finished", test_metric=accuracy, best_test_metric=accuracy)


def test_plot_and_table(script: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "sweep.db"
    base = "base_optimizer=sgd,lr=0.05,momentum=0.9"
    with Store(path) as store:
        for seed in range(3):
            _add(store, "sgd:lr=0.05,momentum=0.9", seed, 0.90 + 0.01 * seed)
            for rho, accuracy in ((0.01, 0.90), (0.1, 0.95), (1.0, 0.80)):
                _add(store, f"sam:{base},rho={rho}", seed, accuracy + 0.001 * seed)
            _add(store, f"sam_on:{base},rho=0.5", seed, 0.93)
    out, table = tmp_path / "fig" / "sweep.png", tmp_path / "table.md"
    assert script.main(["--store", str(path), "--out", str(out), "--table", str(table)]) == 0
    assert out.stat().st_size > 1000
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| method | ρ=0.01 | ρ=0.1 | ρ=0.5 | ρ=1 | best ρ |")
    sam = next(line for line in lines if line.startswith("| sam |"))
    assert "**95.10 ± 0.10** (3)" in sam and sam.endswith("| 0.1 |")
    sam_on = next(line for line in lines if line.startswith("| sam_on |"))
    assert sam_on.count("—") == 3
    assert any(
        line.startswith("| sgd:lr=0.05,momentum=0.9 (no ρ) | 91.00 ± 1.00 (3)") for line in lines
    )
