"""The store refuses what is not its own and says in one line what is wrong (issue 20, 9/11/13).

Every failure is a :class:`StoreError` naming the file; a foreign file is left byte for byte
untouched; an older store of ours is upgraded with its rows kept.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchvalley.bench import store as store_module
from torchvalley.bench.run_config import RunConfig
from torchvalley.bench.store import SCHEMA_VERSION, Store, StoreError

CONFIG = RunConfig("toy", "sgd", "sgd:lr=0.1", {"lr": 0.1}, 0, 0, 2, 16)


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "mine.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
        connection.execute("INSERT INTO contacts VALUES ('ada', '123')")
    connection.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as error:
        Store(path)
    assert "not a torchvalley results store" in _one_line(error)
    assert "contacts" in str(error.value)
    assert path.read_bytes() == before  # no tables added, no user_version, no WAL
    assert not Path(f"{path}-wal").exists()


def test_foreign_file_with_a_runs_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE runs (id INTEGER, distance REAL)")
        connection.execute("CREATE TABLE epochs (id INTEGER)")
        connection.execute("PRAGMA user_version = 1")
    connection.close()
    with pytest.raises(StoreError, match="not a torchvalley results store"):
        Store(path)


def test_non_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("just some text\n")
    with pytest.raises(StoreError) as error:
        Store(path)
    assert "not an SQLite file" in _one_line(error)
    assert path.read_text() == "just some text\n"


def test_future_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with Store(path):
        pass
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(StoreError) as error:
        Store(path)
    assert "newer torchvalley" in _one_line(error)


def test_unusable_paths(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="empty results store path"):
        Store("")
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the folder"):
        Store(blocker / "results.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StoreError, match=r"cannot be written|unable to open"):
            Store(folder / "results.db")
    finally:
        folder.chmod(0o700)


def test_version_2_store_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with Store(path) as opened:
        run_id = opened.begin_run(CONFIG, metric_name="accuracy")
        opened.record_epoch(run_id, 0, train_loss=0.5)
        opened.finish_run(run_id, "finished", test_metric=0.9)
    # Turn it into what version 2 wrote: no owner/threads/cpu columns, no application_id.
    with sqlite3.connect(path) as connection:
        for table, column in (("runs", "owner"), ("runs", "heartbeat_at"), ("runs", "num_threads")):
            connection.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        connection.execute("ALTER TABLE runs DROP COLUMN cpu_time_s")
        connection.execute("ALTER TABLE epochs DROP COLUMN cpu_time_s")
        connection.execute("PRAGMA application_id = 0")
        connection.execute("PRAGMA user_version = 2")
    connection.close()
    with Store(path) as opened:
        (run,) = opened.runs()
        assert (run["status"], run["test_metric"], run["num_threads"]) == ("finished", 0.9, None)
        assert opened.epochs(run_id)[0]["train_loss"] == 0.5
        assert opened.begin_run(CONFIG, metric_name="accuracy") is None  # still done


def _root_page(path: Path, table: str) -> int:
    with sqlite3.connect(path) as connection:
        (page,) = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
    connection.close()
    return page


def test_damaged_page_is_reported_as_damage(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    with Store(path) as opened:
        for seed in range(3):
            opened.begin_run(RunConfig(**{**vars(CONFIG), "seed": seed}), metric_name="accuracy")
    page = _root_page(path, "runs")
    with path.open("r+b") as handle:  # overwrite the runs table's page with garbage
        handle.seek((page - 1) * 4096 + 100 * (page == 1))
        handle.write(b"\xa5" * 2000)
    with pytest.raises(StoreError) as error, Store(path) as opened:
        opened.finish_run(2, "finished")
    assert "is damaged" in _one_line(error)


def test_full_disk_is_one_line(tmp_path: Path, monkeypatch) -> None:
    with Store(tmp_path / "full.db") as opened:
        run_id = opened.begin_run(CONFIG, metric_name="accuracy")
        # SQLite's own error when a write finds no space: make the page limit the disk.
        opened._connection.execute("PRAGMA max_page_count = 1")
        with pytest.raises(StoreError) as error:
            opened.record_epoch(run_id, 0, train_loss="x" * 100_000)
        assert "full" in _one_line(error) and "finished runs are kept" in str(error.value)


def test_a_run_claimed_by_a_live_process_is_not_stolen(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "shared.db"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        owner = f"{store_module.socket.gethostname()}:{sleeper.pid}:"
        owner += store_module._process_start(sleeper.pid)
        with Store(path) as opened:
            run_id = opened.begin_run(CONFIG, metric_name="accuracy")
            opened._connection.execute("UPDATE runs SET owner = ? WHERE id = ?", (owner, run_id))
            assert opened.begin_run(CONFIG, metric_name="accuracy") is None  # the sleeper's
            assert opened.run(run_id)["status"] == "running"
            sleeper.kill()
            sleeper.wait()
            new_id = opened.begin_run(CONFIG, metric_name="accuracy")  # killed: redone
            assert new_id is not None and new_id != run_id
    finally:
        sleeper.kill()
        sleeper.wait()


_SWEEP = """
import sys
from torchvalley.bench.runner import run_sweep
results = run_sweep(["quadratic"], ["sgd:lr=0.01", "adam:lr=0.01"], range(6), epochs=1,
                    store=sys.argv[1], progress=False, warmup=False)
print(sorted((r.status, r.spec_label, r.seed) for r in results))
"""


def test_two_copies_of_one_sweep_share_the_runs(tmp_path: Path) -> None:
    path = tmp_path / "together.db"
    with Store(path):
        pass  # created before either copy starts
    command = [sys.executable, "-c", _SWEEP, str(path)]
    copies = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    copies.append(
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    outputs = [copy.communicate(timeout=600) for copy in copies]
    for copy, (_, err) in zip(copies, outputs, strict=True):
        assert copy.returncode == 0, err
        assert "no run with id" not in err
    with Store(path) as opened:
        runs = opened.runs()
    assert len(runs) == 12 and {run["status"] for run in runs} == {"finished"}
    assert len({run["run_key"] for run in runs}) == 12


def test_a_store_that_is_not_a_path_is_refused_without_creating_a_file(tmp_path, monkeypatch):
    from torchvalley.bench.store import Store, StoreError

    monkeypatch.chdir(tmp_path)
    for bad in (None, 3):
        with pytest.raises(StoreError, match="Invalid results store"):
            Store(bad)
    assert list(tmp_path.iterdir()) == []  # no file called "None"
