"""An embedded SQLite store for benchmark results: one row per run, one row per finished epoch.

The store is what makes a sweep resumable. Every run is identified by a *run key*, a hash of
what determines its numbers (task, optimizer spec label, seed, data seed, epochs, batch size):

* a run whose row says ``finished`` or ``diverged`` is done, and :meth:`Store.begin_run`
  returns ``None`` so the runner skips it;
* a row that says ``running`` (the process was killed) or ``failed`` (it raised) is deleted
  together with its epochs, and the run starts again from scratch.

Each finished epoch is written in its own transaction, and so is the end of a run, so a killed
sweep loses at most the epoch in progress. The database is opened in WAL mode with a busy
timeout, so a report can read it while a sweep writes to it.

One sweep process should write to a store at a time: a ``running`` row cannot tell a killed run
from one that another process is executing right now, and is redone.

SQLite stores NaN as NULL: a diverged run's NaN loss reads back as ``None`` (infinities are kept).

Example:
    >>> with Store(":memory:") as store:
    ...     run_id = store.begin_run(
    ...         task="toy", optimizer="sgd", spec_label="sgd:lr=0.1", hyperparameters={"lr": 0.1},
    ...         seed=0, data_seed=0, epochs=1, batch_size=8, metric_name="accuracy")
    ...     store.record_epoch(run_id, 0, train_loss=0.7, test_loss=0.7, test_metric=0.5)
    ...     store.finish_run(run_id, "finished", test_metric=0.9)
    ...     [run["status"] for run in store.runs()]
    ['finished']
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from torchvalley.bench.specs import format_value

__all__ = [
    "DONE_STATUSES",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "Store",
    "make_run_key",
    "platform_string",
    "utc_now",
]

#: Version of the schema below, kept in ``PRAGMA user_version``; bump it on any change.
SCHEMA_VERSION = 2
# Version 1 lacked the measurements table; opening such a store adds it (nothing else changed).
_UPGRADABLE_VERSIONS = (0, 1)

#: Every value ``runs.status`` can take.
RUN_STATUSES = ("running", "finished", "diverged", "failed")

#: Statuses of runs that are complete and are not run again.
DONE_STATUSES = frozenset({"finished", "diverged"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    -- AUTOINCREMENT: the id of a deleted (redone) run is never given to another run.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_key TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    optimizer TEXT NOT NULL,
    spec_label TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    seed INTEGER NOT NULL,
    data_seed INTEGER NOT NULL,
    epochs INTEGER NOT NULL,
    batch_size INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'diverged', 'failed')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    train_time_s REAL,
    wall_time_s REAL,
    steps INTEGER,
    forward_passes INTEGER,
    backward_passes INTEGER,
    time_to_target_s REAL,
    steps_to_target INTEGER,
    epoch_to_target INTEGER,
    train_loss REAL,
    test_loss REAL,
    test_metric REAL,
    best_test_metric REAL,
    metric_name TEXT NOT NULL,
    higher_is_better INTEGER,
    target REAL,
    torch_version TEXT NOT NULL,
    platform TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_task_status ON runs (task, status);
CREATE TABLE IF NOT EXISTS epochs (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL,
    train_metric REAL,
    test_loss REAL,
    test_metric REAL,
    train_time_s REAL,
    wall_time_s REAL,
    steps INTEGER,
    forward_passes INTEGER,
    backward_passes INTEGER,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS measurements (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, epoch, name)
);
"""

# Columns finish_run may set, i.e. the run's final numbers.
_FINAL_COLUMNS = (
    "train_time_s",
    "wall_time_s",
    "steps",
    "forward_passes",
    "backward_passes",
    "time_to_target_s",
    "steps_to_target",
    "epoch_to_target",
    "train_loss",
    "test_loss",
    "test_metric",
    "best_test_metric",
    "error",
)

_EPOCH_COLUMNS = (
    "train_loss",
    "train_metric",
    "test_loss",
    "test_metric",
    "train_time_s",
    "wall_time_s",
    "steps",
    "forward_passes",
    "backward_passes",
)


def utc_now() -> str:
    """The current time as an ISO 8601 string in UTC (``2024-05-01T12:00:00.123456+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def platform_string() -> str:
    """Where a run ran: OS, machine architecture, processor and Python version, on one line."""
    processor = platform.processor() or platform.machine()
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}; {processor}; "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}"
    )


def _real(value: Any) -> float | None:
    """A measurement as a float (``None`` stays ``None``; 0-d tensors are read out)."""
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def make_run_key(
    task: str, spec_label: str, seed: int, data_seed: int, epochs: int, batch_size: int
) -> str:
    """The identity of a run: a SHA-256 of the canonical JSON of what determines its numbers.

    ``spec_label`` is canonical (hyperparameters sorted), so equal specs give equal keys.
    """
    canonical = json.dumps(
        {
            "task": task,
            "spec": spec_label,
            "seed": int(seed),
            "data_seed": int(data_seed),
            "epochs": int(epochs),
            "batch_size": int(batch_size),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _json_default(value: Any) -> Any:
    # Hyperparameters may hold tuples (JSON lists anyway), optimizer classes, dtypes, ...:
    # store their canonical spec text, which is what the label shows too.
    return format_value(value)


class Store:
    """The results database (SQLite, one file; ``":memory:"`` for a throw-away store).

    Usable as a context manager, which closes the connection on exit.

    Args:
        path: database file (created with its parent folder if missing) or ``":memory:"``.
        timeout: seconds to wait for a lock held by another connection before giving up.

    Raises:
        RuntimeError: if the file was written by a different schema version.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write below opens its own
        # BEGIN IMMEDIATE ... COMMIT, so transaction boundaries are exactly the documented ones.
        self._connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA foreign_keys = ON")
        # WAL lets readers (a report) and one writer (a sweep) work at the same time.
        self._connection.execute("PRAGMA journal_mode = WAL")
        self._connection.execute("PRAGMA synchronous = NORMAL")
        self._create_schema()

    # -- plumbing -----------------------------------------------------------------------------

    def _create_schema(self) -> None:
        with self._transaction() as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (*_UPGRADABLE_VERSIONS, SCHEMA_VERSION):
                raise RuntimeError(
                    f"results store {self.path!r} has schema version {version}; this torchvalley "
                    f"reads version {SCHEMA_VERSION} (use a new file)"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a check-then-write (begin_run) cannot
        # interleave with another writer.
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._connection.close()

    # -- writing ------------------------------------------------------------------------------

    def begin_run(
        self,
        *,
        task: str,
        optimizer: str,
        spec_label: str,
        hyperparameters: Mapping[str, Any],
        seed: int,
        data_seed: int,
        epochs: int,
        batch_size: int,
        metric_name: str,
        higher_is_better: bool | None = None,
        target: float | None = None,
    ) -> int | None:
        """Start a run (status ``running``) and return its id, or ``None`` if it is done.

        A previous row with the same run key that is ``finished`` or ``diverged`` makes this
        return ``None`` (the caller skips the run). One that is ``running`` (a killed run) or
        ``failed`` is deleted with its epochs and the run starts afresh. One transaction.
        """
        run_key = make_run_key(task, spec_label, seed, data_seed, epochs, batch_size)
        with self._transaction() as connection:
            previous = connection.execute(
                "SELECT id, status FROM runs WHERE run_key = ?", (run_key,)
            ).fetchone()
            if previous is not None:
                if previous["status"] in DONE_STATUSES:
                    return None
                connection.execute("DELETE FROM epochs WHERE run_id = ?", (previous["id"],))
                connection.execute("DELETE FROM measurements WHERE run_id = ?", (previous["id"],))
                connection.execute("DELETE FROM runs WHERE id = ?", (previous["id"],))
            cursor = connection.execute(
                """INSERT INTO runs (run_key, task, optimizer, spec_label, hyperparameters, seed,
                    data_seed, epochs, batch_size, status, started_at, metric_name,
                    higher_is_better, target, torch_version, platform)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)""",
                (
                    run_key,
                    task,
                    optimizer,
                    spec_label,
                    json.dumps(dict(hyperparameters), sort_keys=True, default=_json_default),
                    int(seed),
                    int(data_seed),
                    int(epochs),
                    int(batch_size),
                    utc_now(),
                    metric_name,
                    None if higher_is_better is None else int(bool(higher_is_better)),
                    None if target is None else float(target),
                    torch.__version__,
                    platform_string(),
                ),
            )
            return int(cursor.lastrowid)

    def record_epoch(
        self,
        run_id: int,
        epoch: int,
        *,
        train_loss: float | None = None,
        train_metric: float | None = None,
        test_loss: float | None = None,
        test_metric: float | None = None,
        train_time_s: float | None = None,
        wall_time_s: float | None = None,
        steps: int | None = None,
        forward_passes: int | None = None,
        backward_passes: int | None = None,
    ) -> None:
        """Write one finished epoch of a run (epoch 0 is the evaluation before training).

        Times, steps and passes are cumulative since the start of the run. One transaction.

        Raises:
            sqlite3.IntegrityError: if the epoch is already recorded or the run does not exist.
        """
        values = (
            train_loss,
            train_metric,
            test_loss,
            test_metric,
            train_time_s,
            wall_time_s,
            steps,
            forward_passes,
            backward_passes,
        )
        columns = ", ".join(_EPOCH_COLUMNS)
        placeholders = ", ".join("?" for _ in _EPOCH_COLUMNS)
        with self._transaction() as connection:
            connection.execute(
                f"INSERT INTO epochs (run_id, epoch, {columns}) VALUES (?, ?, {placeholders})",
                (int(run_id), int(epoch), *values),
            )

    def record_measurements(self, run_id: int, epoch: int, values: dict[str, float]) -> None:
        """Write named measurements (a callback's numbers: lambda_max, trace, ...) taken at the
        end of ``epoch``. One transaction; a name measured twice at one epoch is an error."""
        rows = [
            (int(run_id), int(epoch), str(name), _real(value)) for name, value in values.items()
        ]
        with self._transaction() as connection:
            connection.executemany(
                "INSERT INTO measurements (run_id, epoch, name, value) VALUES (?, ?, ?, ?)", rows
            )

    def measurements(self, run_id: int) -> list[dict[str, Any]]:
        """A run's measurements as ``{"epoch", "name", "value"}`` dicts, by epoch then name."""
        rows = self._connection.execute(
            "SELECT epoch, name, value FROM measurements WHERE run_id = ? ORDER BY epoch, name",
            (int(run_id),),
        )
        return [dict(row) for row in rows]

    def finish_run(self, run_id: int, status: str, **final: Any) -> None:
        """Mark a run ``finished``, ``diverged`` or ``failed`` and store its final numbers.

        Args:
            run_id: the id :meth:`begin_run` returned.
            status: ``"finished"``, ``"diverged"`` or ``"failed"``.
            **final: any of ``train_time_s``, ``wall_time_s``, ``steps``, ``forward_passes``,
                ``backward_passes``, ``time_to_target_s``, ``steps_to_target``,
                ``epoch_to_target``, ``train_loss``, ``test_loss``, ``test_metric``,
                ``best_test_metric``, ``error``; those left out stay NULL.

        Raises:
            ValueError: for another status, an unknown column, or an unknown ``run_id``.
        """
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"invalid final status {status!r}; expected finished/diverged/failed")
        unknown = sorted(set(final) - set(_FINAL_COLUMNS))
        if unknown:
            raise ValueError(f"unknown run columns {unknown}; expected some of {_FINAL_COLUMNS}")
        assignments = ", ".join(f"{column} = ?" for column in final)
        sql = "UPDATE runs SET status = ?, finished_at = ?"
        if assignments:
            sql += f", {assignments}"
        with self._transaction() as connection:
            cursor = connection.execute(
                sql + " WHERE id = ?", (status, utc_now(), *final.values(), int(run_id))
            )
            if cursor.rowcount != 1:
                raise ValueError(f"no run with id {run_id}")

    # -- reading ------------------------------------------------------------------------------

    def runs(self, task: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Runs as dicts (column -> value; ``hyperparameters`` decoded), in insertion order.

        Args:
            task: only this task's runs.
            status: only runs with this status.
        """
        clauses, parameters = [], []
        if task is not None:
            clauses.append("task = ?")
            parameters.append(task)
        if status is not None:
            clauses.append("status = ?")
            parameters.append(status)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._connection.execute(f"SELECT * FROM runs{where} ORDER BY id", parameters)
        return [self._run_dict(row) for row in rows]

    def run(self, run_id: int) -> dict[str, Any] | None:
        """One run as a dict, or ``None`` if there is no such id."""
        row = self._connection.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        return None if row is None else self._run_dict(row)

    def run_by_key(self, run_key: str) -> dict[str, Any] | None:
        """The run with this run key (see :func:`make_run_key`), or ``None``."""
        row = self._connection.execute(
            "SELECT * FROM runs WHERE run_key = ?", (run_key,)
        ).fetchone()
        return None if row is None else self._run_dict(row)

    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """A run's recorded epochs as dicts, ordered by epoch (0 = before training)."""
        rows = self._connection.execute(
            "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (int(run_id),)
        )
        return [dict(row) for row in rows]

    def is_finished(self, run_key: str) -> bool:
        """Whether the run with this key is done (``finished`` or ``diverged``), i.e. skipped."""
        row = self._connection.execute(
            "SELECT status FROM runs WHERE run_key = ?", (run_key,)
        ).fetchone()
        return row is not None and row["status"] in DONE_STATUSES

    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
        run = dict(row)
        run["hyperparameters"] = json.loads(run["hyperparameters"])
        if run["higher_is_better"] is not None:
            run["higher_is_better"] = bool(run["higher_is_better"])
        return run
