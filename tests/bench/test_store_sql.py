"""The store through one SQL layer: PostgreSQL by URL (a real server the tests start),
concurrent writers from several processes, migrations of an old SQLite store, claims released
by a sweep whose worker died, and the tuning table."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys

import pytest

from torchvalley.bench.run_config import RunConfig
from torchvalley.bench.store import APPLICATION_ID, SCHEMA_VERSION, Store, StoreError
from torchvalley.testing.postgres import PostgresUnavailable, fresh_database, postgres_server

CONFIG = RunConfig("toy", "sgd", "sgd:lr=0.1", {"lr": 0.1}, 0, 0, 2, 16)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    try:
        with postgres_server(tmp_path_factory.mktemp("pg")) as url:
            yield url
    except PostgresUnavailable as reason:
        pytest.skip(str(reason))


@pytest.fixture
def pg_url(server) -> str:
    return fresh_database(server)


def _lifecycle(store: Store) -> None:
    run_id = store.begin_run(CONFIG, metric_name="accuracy", higher_is_better=True)
    store.record_epoch(run_id, 0, train_loss=0.7, test_metric=0.5, steps=0)
    store.record_epoch(run_id, 1, train_loss=math.inf, test_loss=math.nan, steps=2**40)
    store.record_measurements(run_id, 1, {"lambda_max": 3.5})
    store.finish_run(run_id, "diverged", train_loss=math.nan, test_loss=-math.inf)
    assert store.begin_run(CONFIG, metric_name="accuracy") is None  # done: skipped
    (run,) = store.runs()
    assert (run["status"], run["higher_is_better"], run["hyperparameters"]) == (
        "diverged",
        True,
        {"lr": 0.1},
    )
    assert run["train_loss"] is None and run["test_loss"] == -math.inf  # NaN -> NULL everywhere
    epochs = store.epochs(run_id)
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[1]["train_loss"] == math.inf and epochs[1]["test_loss"] is None
    assert epochs[1]["steps"] == 2**40  # 64-bit columns
    assert store.measurements(run_id) == [{"epoch": 1, "name": "lambda_max", "value": 3.5}]


def test_postgres_store_has_the_same_lifecycle_as_sqlite(pg_url, tmp_path):
    with Store(tmp_path / "same.db") as local:
        _lifecycle(local)
    with Store(pg_url) as remote:
        assert remote.dialect == "postgresql"
        _lifecycle(remote)
        run_id = remote.runs()[0]["id"]
        with pytest.raises(Exception, match=r"duplicate key|unique") as error:
            remote.record_epoch(run_id, 0)  # the driver's IntegrityError, not a StoreError
        assert not isinstance(error.value, StoreError)
        assert len(remote.epochs(run_id)) == 2  # the failed write left nothing behind
    with Store(pg_url) as reopened:  # reopening an existing store of ours
        assert len(reopened.runs()) == 1


def test_foreign_and_newer_postgres_databases_are_refused(server):
    import sqlalchemy as sa

    foreign = fresh_database(server)
    engine = sa.create_engine(foreign, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE runs (id INTEGER, what TEXT)")
    with pytest.raises(StoreError, match="did not write") as error:
        Store(foreign)
    assert "\n" not in str(error.value) and "password" not in str(error.value)
    with engine.connect() as connection:  # left untouched
        names = sa.inspect(connection).get_table_names()
    assert names == ["runs"]
    engine.dispose()

    newer = fresh_database(server)
    Store(newer).close()
    engine = sa.create_engine(newer, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE torchvalley_store SET schema_version = 99")
    engine.dispose()
    with pytest.raises(StoreError, match="schema version 99, written by a newer"):
        Store(newer)


def test_unreachable_server_is_one_line():
    with pytest.raises(StoreError) as error:
        Store("postgresql://nobody:secret@127.0.0.1:1/none", timeout=2)
    text = str(error.value)
    assert "\n" not in text and "secret" not in text and "127.0.0.1" in text


_WRITER = """
import sys
from torchvalley.bench.run_config import RunConfig
from torchvalley.bench.store import Store
claimed = []
with Store(sys.argv[1]) as store:
    for seed in range(int(sys.argv[2])):
        config = RunConfig("toy", "sgd", "sgd:lr=0.1", {"lr": 0.1}, seed, 0, 3, 16)
        run_id = store.begin_run(config, metric_name="accuracy")
        if run_id is None:
            continue
        for epoch in range(4):
            store.record_epoch(run_id, epoch, train_loss=1.0 / (epoch + 1))
        store.finish_run(run_id, "finished", test_metric=float(seed))
        claimed.append(seed)
print(" ".join(map(str, claimed)))
"""


def test_concurrent_writers_from_several_processes(pg_url):
    """Three processes claim the same 24 runs on PostgreSQL: each run is written exactly once,
    in full (SQLite: tests/bench/test_store_errors.py runs two copies of one sweep)."""
    location = pg_url
    Store(location).close()  # created before the writers start
    runs = 24
    command = [sys.executable, "-c", _WRITER, location, str(runs)]
    writers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [writer.communicate(timeout=300) for writer in writers]
    for writer, (_, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
    claimed = [int(seed) for out, _ in outputs for seed in out.split()]
    assert sorted(claimed) == list(range(runs))  # every run claimed once, none twice
    with Store(location) as store:
        rows = store.runs()
        assert len(rows) == runs and {row["status"] for row in rows} == {"finished"}
        assert all(len(store.epochs(row["id"])) == 4 for row in rows)


_V3_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, run_key TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL, optimizer TEXT NOT NULL, spec_label TEXT NOT NULL,
    hyperparameters TEXT NOT NULL, seed INTEGER NOT NULL, data_seed INTEGER NOT NULL,
    epochs INTEGER NOT NULL, batch_size INTEGER NOT NULL, status TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, train_time_s REAL, wall_time_s REAL,
    steps INTEGER, forward_passes INTEGER, backward_passes INTEGER, time_to_target_s REAL,
    steps_to_target INTEGER, epoch_to_target INTEGER, train_loss REAL, test_loss REAL,
    test_metric REAL, best_test_metric REAL, metric_name TEXT NOT NULL, higher_is_better INTEGER,
    target REAL, torch_version TEXT NOT NULL, platform TEXT NOT NULL, error TEXT, owner TEXT,
    heartbeat_at REAL, num_threads INTEGER, cpu_time_s REAL);
CREATE INDEX runs_task_status ON runs (task, status);
CREATE TABLE epochs (run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL, train_loss REAL, train_metric REAL, test_loss REAL,
    test_metric REAL, train_time_s REAL, wall_time_s REAL, steps INTEGER,
    forward_passes INTEGER, backward_passes INTEGER, cpu_time_s REAL,
    PRIMARY KEY (run_id, epoch));
CREATE TABLE measurements (run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL, name TEXT NOT NULL, value REAL, PRIMARY KEY (run_id, epoch, name));
"""


def test_version_3_store_written_by_the_previous_release_upgrades_in_place(tmp_path):
    """The DDL the sqlite3-only store of version 3 wrote, with one finished run."""
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(_V3_SCHEMA)
        connection.execute(
            "INSERT INTO runs (run_key, task, optimizer, spec_label, hyperparameters, seed, "
            "data_seed, epochs, batch_size, status, started_at, metric_name, torch_version, "
            "platform, test_metric) VALUES (?, 'toy', 'sgd', 'sgd:lr=0.1', '{\"lr\": 0.1}', 0, "
            "0, 2, 16, 'finished', 'then', 'accuracy', 'x', 'y', 0.75)",
            (CONFIG.key,),
        )
        connection.execute("INSERT INTO epochs (run_id, epoch, train_loss) VALUES (1, 0, 0.5)")
        connection.execute("PRAGMA user_version = 3")
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    connection.close()
    with Store(path) as store:
        (run,) = store.runs()
        assert run["test_metric"] == 0.75 and run["claim"] is None
        assert store.epochs(1)[0]["train_loss"] == 0.5
        assert store.begin_run(CONFIG, metric_name="accuracy") is None  # still done
        store.record_tuning("toy/sgd", task="toy", optimizer="sgd", budget=4)  # new table
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        columns = {row[1] for row in connection.execute("PRAGMA table_info(runs)")}
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    connection.close()
    assert "claim" in columns and "tuning" in tables


def test_a_released_claim_is_redone_at_once(tmp_path):
    """A sweep whose worker died releases the worker's claim: the run is not left 'running'
    for CLAIM_TIMEOUT_S (a worker on another host looks alive until then)."""
    with Store(tmp_path / "claims.db") as store:
        run_id = store.begin_run(CONFIG, metric_name="accuracy", claim="sweep-1:run-0:try-1")
        store.record_epoch(run_id, 0, train_loss=1.0)
        # Pretend another host owns it, with a fresh heartbeat: it would be left alone.
        store._connection.execute(
            "UPDATE runs SET owner = 'elsewhere:1:1', heartbeat_at = 1e18 WHERE id = ?", (run_id,)
        )
        assert store.begin_run(CONFIG, metric_name="accuracy") is None
        assert store.release_claim("sweep-1:run-0:try-2") == 0  # another try's token: kept
        assert store.release_claim("sweep-1:run-0:try-1") == 1
        assert store.runs() == [] and store.epochs(run_id) == []
        new_id = store.begin_run(CONFIG, metric_name="accuracy", claim="sweep-1:run-0:try-2")
        store.finish_run(new_id, "finished")
        assert store.release_claim("sweep-1:run-0:try-2") == 0  # finished rows are never released


def test_sqlite_url_is_the_file_and_tuning_rows_round_trip(tmp_path):
    path = tmp_path / "by_url.db"
    with Store(f"sqlite:///{path}") as store:
        assert store.path == str(path) and store.dialect == "sqlite"
        store.record_tuning(
            "toy/sgd",
            task="toy",
            optimizer="sgd",
            budget=8,
            best_params={"lr": 0.05},
            best_value=0.25,
            importances={"lr": 1.0},
        )
        store.record_tuning("toy/sgd", task="toy", optimizer="sgd", budget=9)  # replaces
        with pytest.raises(ValueError, match="unknown tuning columns"):
            store.record_tuning("x", task="toy", optimizer="sgd", colour="red")
    with Store(path) as store:
        (study,) = store.tuning()
    assert (study["budget"], study["best_params"]) == (9, None)
