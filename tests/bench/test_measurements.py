"""Epoch callbacks: their numbers reach RunResult.measurements and the store, once per epoch."""

import sqlite3

import pytest
import torch

from torchvalley.bench.runner import EpochContext, run_one
from torchvalley.bench.store import SCHEMA_VERSION, Store


def _weight_norm(context: EpochContext) -> dict[str, float]:
    norm = torch.sqrt(sum(p.detach().pow(2).sum() for p in context.model.parameters()))
    return {"weight_norm": float(norm), "epoch_seen": float(context.epoch)}


def test_callback_values_are_recorded_per_epoch(tmp_path):
    path = tmp_path / "m.db"
    with Store(path) as store:
        result = run_one(
            "quadratic",
            "sgd:lr=0.01",
            0,
            epochs=3,
            store=store,
            progress=False,
            callbacks=[_weight_norm],
            keep_model=True,
        )
        rows = store.measurements(result.run_id)
    assert result.status == "finished"
    # Oracle: epoch e's callback saw the model after e epochs; the last one is the final model.
    final_norm = float(torch.sqrt(sum(p.detach().pow(2).sum() for p in result.model.parameters())))
    by_epoch = {(r["epoch"], r["name"]): r["value"] for r in rows}
    assert sorted({r["epoch"] for r in rows}) == [0, 1, 2, 3]
    assert all(by_epoch[(e, "epoch_seen")] == e for e in range(4))
    assert by_epoch[(3, "weight_norm")] == pytest.approx(final_norm, rel=1e-12)
    stored = {(r["epoch"], r["name"], r["value"]) for r in rows}
    assert set(result.measurements) == stored and len(result.measurements) == 8


def test_model_is_dropped_unless_kept():
    result = run_one("quadratic", "sgd:lr=0.01", 0, epochs=1, progress=False)
    assert result.model is None


def test_version_1_store_is_upgraded(tmp_path):
    path = tmp_path / "old.db"
    with Store(path):
        pass
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE measurements")
        connection.execute("PRAGMA user_version = 1")
    with Store(path) as store:
        assert store.measurements(1) == []
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
