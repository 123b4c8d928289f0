"""The SQLite results store: schema, run lifecycle, resumability rules, concurrent reading."""

from __future__ import annotations

import math
import sqlite3

import pytest

from torchvalley.bench.store import SCHEMA_VERSION, Store, make_run_key

RUN = {
    "task": "toy",
    "optimizer": "sgd",
    "spec_label": "sgd:lr=0.1,momentum=0.9",
    "hyperparameters": {"lr": 0.1, "momentum": 0.9},
    "seed": 3,
    "data_seed": 0,
    "epochs": 2,
    "batch_size": 16,
    "metric_name": "accuracy",
    "higher_is_better": True,
    "target": 0.9,
}


def _epoch(epoch: int) -> dict[str, float | int]:
    return {
        "train_loss": 1.0 / (epoch + 1),
        "train_metric": 0.5 + 0.1 * epoch,
        "test_loss": 1.1 / (epoch + 1),
        "test_metric": 0.4 + 0.1 * epoch,
        "train_time_s": 0.25 * epoch,
        "wall_time_s": 0.3 * epoch + 0.01,
        "steps": 4 * epoch,
        "forward_passes": 4 * epoch,
        "backward_passes": 4 * epoch,
    }


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "results.sqlite") as opened:
        yield opened


def test_schema_tables_version_and_wal(store):
    connection = sqlite3.connect(store.path)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"runs", "epochs"} <= tables
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "old.sqlite"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        Store(path)


def test_run_lifecycle_and_reading_back(store):
    run_id = store.begin_run(**RUN)
    assert isinstance(run_id, int)
    for epoch in range(3):
        store.record_epoch(run_id, epoch, **_epoch(epoch))
    store.finish_run(
        run_id, "finished", train_time_s=0.5, steps=8, test_metric=0.6, best_test_metric=0.6
    )

    (run,) = store.runs()
    assert run["status"] == "finished"
    assert run["hyperparameters"] == {"lr": 0.1, "momentum": 0.9}
    assert run["higher_is_better"] is True
    assert run["target"] == 0.9
    assert (run["train_time_s"], run["steps"], run["test_metric"]) == (0.5, 8, 0.6)
    assert run["time_to_target_s"] is None  # not given: stays NULL
    assert run["started_at"] <= run["finished_at"]
    assert run["started_at"].endswith("+00:00")
    assert run["torch_version"] and run["platform"]
    assert run["run_key"] == make_run_key("toy", RUN["spec_label"], 3, 0, 2, 16)
    assert store.run(run_id) == run

    epochs = store.epochs(run_id)
    assert [row["epoch"] for row in epochs] == [0, 1, 2]
    for row in epochs:
        expected = _epoch(row["epoch"])
        assert {key: row[key] for key in expected} == expected


def test_done_runs_are_skipped_and_unfinished_ones_restart(store):
    finished_id = store.begin_run(**RUN)
    store.finish_run(finished_id, "finished")
    assert store.begin_run(**RUN) is None
    assert store.is_finished(make_run_key("toy", RUN["spec_label"], 3, 0, 2, 16))

    diverged = {**RUN, "seed": 4}
    diverged_id = store.begin_run(**diverged)
    store.finish_run(diverged_id, "diverged", train_loss=math.inf)
    assert store.begin_run(**diverged) is None

    for status in ("running", "failed"):
        killed = {**RUN, "seed": 10 if status == "running" else 11}
        old_id = store.begin_run(**killed)
        store.record_epoch(old_id, 0, **_epoch(0))
        store.record_epoch(old_id, 1, **_epoch(1))
        if status == "failed":
            store.finish_run(old_id, "failed", error="boom")
        key = make_run_key("toy", RUN["spec_label"], killed["seed"], 0, 2, 16)
        assert not store.is_finished(key)
        new_id = store.begin_run(**killed)
        assert new_id is not None and new_id != old_id
        assert store.run(old_id) is None
        assert store.epochs(old_id) == []
        assert store.epochs(new_id) == []
        assert store.run(new_id)["status"] == "running"

    assert len(store.runs()) == 4


def test_run_key_depends_on_every_identifying_field():
    base = ("toy", "sgd:lr=0.1", 0, 0, 5, 32)
    keys = {make_run_key(*base)}
    for index, changed in enumerate(("other", "sgd:lr=0.2", 1, 1, 6, 64)):
        variant = list(base)
        variant[index] = changed
        keys.add(make_run_key(*variant))
    assert len(keys) == 7
    assert make_run_key(*base) == make_run_key(*base)


def test_filters(store):
    first = store.begin_run(**RUN)
    store.finish_run(first, "finished")
    store.begin_run(**{**RUN, "seed": 5})
    store.begin_run(**{**RUN, "task": "other"})
    assert len(store.runs()) == 3
    assert [run["seed"] for run in store.runs(task="toy")] == [3, 5]
    assert [run["id"] for run in store.runs(status="finished")] == [first]
    assert [run["task"] for run in store.runs(task="other", status="running")] == ["other"]
    assert store.runs(task="missing") == []


def test_non_finite_values(store):
    run_id = store.begin_run(**RUN)
    store.record_epoch(run_id, 0, train_loss=math.inf, test_loss=math.nan)
    store.finish_run(run_id, "diverged", train_loss=math.nan, test_loss=-math.inf)
    (row,) = store.epochs(run_id)
    assert row["train_loss"] == math.inf
    assert row["test_loss"] is None  # SQLite stores NaN as NULL
    run = store.run(run_id)
    assert run["train_loss"] is None and run["test_loss"] == -math.inf


def test_invalid_writes_are_rejected_without_partial_state(store):
    run_id = store.begin_run(**RUN)
    store.record_epoch(run_id, 0, **_epoch(0))
    with pytest.raises(sqlite3.IntegrityError):
        store.record_epoch(run_id, 0, **_epoch(1))
    assert store.epochs(run_id)[0]["train_loss"] == _epoch(0)["train_loss"]
    with pytest.raises(sqlite3.IntegrityError):
        store.record_epoch(run_id + 100, 0)  # no such run (foreign key)
    with pytest.raises(ValueError, match="final status"):
        store.finish_run(run_id, "running")
    with pytest.raises(ValueError, match="unknown run columns"):
        store.finish_run(run_id, "finished", accuracy=1.0)
    with pytest.raises(ValueError, match="no run with id"):
        store.finish_run(run_id + 100, "finished")
    assert store.run(run_id)["status"] == "running"


def test_a_second_connection_sees_each_epoch_as_it_is_committed(tmp_path):
    path = tmp_path / "shared.sqlite"
    with Store(path) as writer, Store(path) as reader:
        run_id = writer.begin_run(**RUN)
        assert [run["status"] for run in reader.runs()] == ["running"]
        writer.record_epoch(run_id, 0, **_epoch(0))
        assert len(reader.epochs(run_id)) == 1
        writer.finish_run(run_id, "finished")
        assert reader.is_finished(reader.run(run_id)["run_key"])


def test_memory_store_and_close():
    store = Store(":memory:")
    assert store.begin_run(**RUN) == 1
    store.close()
    store.close()  # idempotent
    with pytest.raises(sqlite3.ProgrammingError):
        store.runs()


def test_hyperparameters_that_are_not_json(store):
    import torch

    run_id = store.begin_run(
        **{**RUN, "hyperparameters": {"betas": (0.9, 0.99), "base_optimizer": torch.optim.SGD}}
    )
    assert store.run(run_id)["hyperparameters"] == {
        "base_optimizer": "torch.optim.sgd.SGD",
        "betas": [0.9, 0.99],
    }
