"""An embedded SQLite store for benchmark results: one row per run, one row per finished epoch.

The store is what makes a sweep resumable. Every run is identified by a *run key*, a hash of
what determines its numbers (task, optimizer spec label, seed, data seed, epochs, batch size):

* a run whose row says ``finished`` or ``diverged`` is done, and :meth:`Store.begin_run`
  returns ``None`` so the runner skips it;
* a row that says ``failed`` (it raised), or ``running`` with an owner that is gone (the
  process was killed), is deleted together with its epochs, and the run starts from scratch;
* a row that says ``running`` and whose owner is alive belongs to another sweep: it is left
  alone and :meth:`Store.begin_run` returns ``None`` (see :meth:`Store.claim_run`).

Claiming is one ``BEGIN IMMEDIATE`` transaction, so copies of one sweep started on one store
share its runs instead of stealing them from each other. The owner is ``host:pid:start`` (the
process start time guards against a reused pid); on the same host a dead process is detected at
once, a run owned by another host counts as abandoned once its last heartbeat (written with each
epoch) is :data:`CLAIM_TIMEOUT_S` old.

Each finished epoch is written in its own transaction, and so is the end of a run, so a killed
sweep loses at most the epoch in progress. The database is opened in WAL mode with a busy
timeout, so a report can read it while a sweep writes to it.

Opening refuses what is not a store of ours (:class:`StoreError`, one line): a file that is not
SQLite, a SQLite file with other tables (a store carries ``PRAGMA application_id``), a store of a
newer schema, a damaged file (``PRAGMA quick_check`` runs when an operation fails). A store of an
older schema of ours is upgraded in place.

SQLite stores NaN as NULL: a diverged run's NaN loss reads back as ``None`` (infinities are kept).

Example:
    >>> config = RunConfig("toy", "sgd", "sgd:lr=0.1", {"lr": 0.1}, seed=0, data_seed=0,
    ...                    epochs=1, batch_size=8)
    >>> with Store(":memory:") as store:
    ...     run_id = store.begin_run(config, metric_name="accuracy")
    ...     store.record_epoch(run_id, 0, train_loss=0.7, test_loss=0.7, test_metric=0.5)
    ...     store.finish_run(run_id, "finished", test_metric=0.9)
    ...     [run["status"] for run in store.runs()]
    ['finished']
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from torchvalley.bench.run_config import RunConfig, make_run_key
from torchvalley.bench.specs import format_value

__all__ = [
    "APPLICATION_ID",
    "CLAIM_TIMEOUT_S",
    "DONE_STATUSES",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "RunConfig",
    "Store",
    "StoreError",
    "make_run_key",
    "platform_string",
    "utc_now",
]

#: Version of the schema below, kept in ``PRAGMA user_version``; bump it on any change.
SCHEMA_VERSION = 3
#: ``PRAGMA application_id`` of a torchvalley store ("TVal"), set from schema version 3 on.
APPLICATION_ID = 0x5456616C
#: Seconds after its last heartbeat that a ``running`` row of another host counts as abandoned.
CLAIM_TIMEOUT_S = 3600.0

#: Every value ``runs.status`` can take.
RUN_STATUSES = ("running", "finished", "diverged", "failed")

#: Statuses of runs that are complete and are not run again.
DONE_STATUSES = frozenset({"finished", "diverged"})

_SQLITE_HEADER = b"SQLite format 3\x00"

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
    error TEXT,
    owner TEXT,
    heartbeat_at REAL,
    num_threads INTEGER,
    cpu_time_s REAL
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
    cpu_time_s REAL,
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

# Columns each older schema of ours lacks; upgrading adds them (NULL for old rows).
_ADDED_IN_3 = (
    ("runs", "owner TEXT"),
    ("runs", "heartbeat_at REAL"),
    ("runs", "num_threads INTEGER"),
    ("runs", "cpu_time_s REAL"),
    ("epochs", "cpu_time_s REAL"),
)
# Version 1 lacked the measurements table (created by _SCHEMA), version 2 the columns above.
_UPGRADABLE_VERSIONS = (1, 2)

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
    "num_threads",
    "cpu_time_s",
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
    "cpu_time_s",
)


class StoreError(RuntimeError):
    """A results store that cannot be used: not ours, newer, damaged, unwritable or full.

    The message is one line naming the file and what to do.
    """


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


def _json_default(value: Any) -> Any:
    # Hyperparameters may hold tuples (JSON lists anyway), optimizer classes, dtypes, ...:
    # store their canonical spec text, which is what the label shows too.
    return format_value(value)


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ("" where unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces, so split after its ")".
    return stat.rsplit(")", 1)[1].split()[19]


@functools.lru_cache(maxsize=1)
def _owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def _owner_alive(owner: str | None, heartbeat_at: float | None) -> bool:
    """Whether the process that claimed a ``running`` row may still be executing it."""
    if not owner:
        return False  # a row written before owners were recorded: a killed run
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        return heartbeat_at is not None and time.time() - heartbeat_at < CLAIM_TIMEOUT_S
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # our own row from an interrupted run: redo it
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: use the heartbeat
        return heartbeat_at is not None and time.time() - heartbeat_at < CLAIM_TIMEOUT_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return not start or _process_start(pid) in ("", start)


def _sqlite_error(path: str, error: sqlite3.Error) -> StoreError:
    text = str(error)
    if "disk is full" in text or "disk I/O" in text:
        return StoreError(
            f"results store {path!r}: {text} (free space and rerun; finished runs are kept)"
        )
    if "readonly" in text or "unable to open" in text:
        return StoreError(f"results store {path!r} cannot be written: {text}")
    return StoreError(f"results store {path!r}: {text}")


class Store:
    """The results database (SQLite, one file; ``":memory:"`` for a throw-away store).

    Usable as a context manager, which closes the connection on exit.

    Args:
        path: database file (created with its parent folder if missing) or ``":memory:"``.
        timeout: seconds to wait for a lock held by another connection before giving up.

    Raises:
        StoreError: (a ``RuntimeError``) if the path is empty or cannot be created, or the file
            is not a store of ours (not SQLite, other tables), of a newer schema, or damaged.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = str(path)
        if not self.path.strip():
            raise StoreError("empty results store path; give a file name (or ':memory:')")
        self._connection: sqlite3.Connection | None = None
        if self.path != ":memory:":
            self._check_file()
        try:
            # isolation_level=None: no implicit transactions; every write below opens its own
            # BEGIN IMMEDIATE ... COMMIT, so transaction boundaries are the documented ones.
            self._connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._connection.row_factory = sqlite3.Row
            self._connection.execute("PRAGMA foreign_keys = ON")
            self._create_schema()
            # WAL lets readers (a report) and one writer (a sweep) work at the same time.
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute("PRAGMA synchronous = NORMAL")
        except StoreError:
            self.close()
            raise
        except sqlite3.DatabaseError as error:
            damage = self._damage() if self._connection is not None else None
            self.close()
            if damage is not None or "malformed" in str(error) or "not a database" in str(error):
                raise StoreError(
                    f"results store {self.path!r} is damaged ({damage or error}); restore it "
                    "from a backup or use a new file"
                ) from None
            raise _sqlite_error(self.path, error) from None

    # -- plumbing -----------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Refuse a path that cannot hold a store before SQLite touches it."""
        target = Path(self.path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"cannot create the folder of results store {self.path!r}: "
                f"{error.strerror or error}"
            ) from None
        if target.is_dir():
            raise StoreError(f"results store {self.path!r} is a directory; give a file name")
        if target.exists():
            try:
                with target.open("rb") as handle:
                    header = handle.read(len(_SQLITE_HEADER))
            except OSError as error:
                raise StoreError(
                    f"cannot read results store {self.path!r}: {error.strerror or error}"
                ) from None
            if header and header != _SQLITE_HEADER:
                raise StoreError(
                    f"{self.path!r} is not a torchvalley results store (not an SQLite file); "
                    "give another file name"
                )

    def _create_schema(self) -> None:
        with self._transaction() as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            application = connection.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            }
            if version > SCHEMA_VERSION and application in (0, APPLICATION_ID):
                raise StoreError(
                    f"results store {self.path!r} has schema version {version}, written by a "
                    f"newer torchvalley (this one reads version {SCHEMA_VERSION}); upgrade "
                    "torchvalley or use a new file"
                )
            if not self._is_ours(version, application, tables):
                listed = ", ".join(sorted(tables)) or "none"
                raise StoreError(
                    f"{self.path!r} is an SQLite file but not a torchvalley results store "
                    f"(tables: {listed}; application_id {application}); it is left untouched, "
                    "give another file name"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            if version in _UPGRADABLE_VERSIONS:
                for table, column in _ADDED_IN_3:
                    existing = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
                    if column.split()[0] not in existing:
                        connection.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def _is_ours(self, version: int, application: int, tables: set[str]) -> bool:
        """A new (empty) file, or one this module wrote (at this or an older schema)."""
        if application not in (0, APPLICATION_ID):
            return False
        if not tables:
            return version == 0
        if version not in (*_UPGRADABLE_VERSIONS, SCHEMA_VERSION):
            return False
        if version == SCHEMA_VERSION and application != APPLICATION_ID:
            return False
        # Versions 1 and 2 predate application_id: recognise them by their tables and columns.
        if not {"runs", "epochs"} <= tables <= {"runs", "epochs", "measurements"}:
            return False
        columns = {row[1] for row in self._connection.execute("PRAGMA table_info(runs)")}
        return {"run_key", "spec_label", "status", "metric_name"} <= columns

    def _damage(self) -> str | None:
        """``PRAGMA quick_check``'s first complaint, or ``None`` if the file is intact."""
        try:
            rows = self._connection.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as error:
            return str(error)
        first = rows[0][0] if rows else "ok"
        return None if first == "ok" else str(first)

    def _raise_if_damaged(self) -> None:
        damage = self._damage()
        if damage is not None:
            raise StoreError(
                f"results store {self.path!r} is damaged ({damage}); restore it from a backup "
                "or use a new file"
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a check-then-write (begin_run) cannot
        # interleave with another writer.
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise _sqlite_error(self.path, error) from None
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            if isinstance(
                error, sqlite3.IntegrityError | sqlite3.ProgrammingError | StoreError
            ) or not isinstance(error, sqlite3.DatabaseError):
                raise
            # Full disk, read-only file, damaged page: one line naming the file.
            if self.path != ":memory:" and not isinstance(error, sqlite3.OperationalError):
                self._raise_if_damaged()
            raise _sqlite_error(self.path, error) from None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._connection is not None:
            self._connection.close()

    # -- writing ------------------------------------------------------------------------------

    def begin_run(
        self,
        config: RunConfig | None = None,
        *,
        metric_name: str,
        higher_is_better: bool | None = None,
        target: float | None = None,
        **identity: Any,
    ) -> int | None:
        """Claim a run (status ``running``) and return its id, or ``None`` if it is not ours.

        A previous row with the same run key (or one of ``config.legacy_keys``) that is
        ``finished`` or ``diverged``, or ``running`` in a live process (another sweep executes
        it), makes this return ``None``: the caller skips the run. One that is ``failed``, or
        ``running`` with its owner gone (a killed run), is deleted with its epochs and the run
        starts afresh. One ``BEGIN IMMEDIATE`` transaction, so two sweeps never claim one run.

        Args:
            config: the run's :class:`RunConfig`. The older keyword form (``task=``,
                ``optimizer=``, ``spec_label=``, ``hyperparameters=``, ``seed=``,
                ``data_seed=``, ``epochs=``, ``batch_size=``) is accepted too.
            metric_name, higher_is_better, target: the task's metric, stored with the run.
        """
        if config is None:
            config = RunConfig(**identity)
        elif identity:
            raise TypeError(f"begin_run got a config and {sorted(identity)}")
        with self._transaction() as connection:
            previous = None
            for run_key in (config.key, *config.legacy_keys):
                previous = connection.execute(
                    "SELECT id, status, owner, heartbeat_at FROM runs WHERE run_key = ?",
                    (run_key,),
                ).fetchone()
                if previous is not None:
                    break
            if previous is not None:
                if previous["status"] in DONE_STATUSES:
                    return None
                if previous["status"] == "running" and _owner_alive(
                    previous["owner"], previous["heartbeat_at"]
                ):
                    return None  # another sweep is executing it right now
                connection.execute("DELETE FROM epochs WHERE run_id = ?", (previous["id"],))
                connection.execute("DELETE FROM measurements WHERE run_id = ?", (previous["id"],))
                connection.execute("DELETE FROM runs WHERE id = ?", (previous["id"],))
            cursor = connection.execute(
                """INSERT INTO runs (run_key, task, optimizer, spec_label, hyperparameters, seed,
                    data_seed, epochs, batch_size, status, started_at, metric_name,
                    higher_is_better, target, torch_version, platform, owner, heartbeat_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    config.key,
                    config.task,
                    config.optimizer,
                    config.spec_label,
                    json.dumps(dict(config.hyperparameters), sort_keys=True, default=_json_default),
                    int(config.seed),
                    int(config.data_seed),
                    int(config.epochs),
                    int(config.batch_size),
                    utc_now(),
                    metric_name,
                    None if higher_is_better is None else int(bool(higher_is_better)),
                    None if target is None else float(target),
                    torch.__version__,
                    platform_string(),
                    _owner(),
                    time.time(),
                ),
            )
            return int(cursor.lastrowid)

    def record_epoch(self, run_id: int, epoch: Any, **values: Any) -> None:
        """Write one finished epoch of a run (epoch 0 is the evaluation before training).

        ``epoch`` is an :class:`~torchvalley.bench.runner.EpochRecord` (passed whole), or the
        epoch number with the values as keywords (``train_loss``, ``train_metric``,
        ``test_loss``, ``test_metric``, ``train_time_s``, ``wall_time_s``, ``steps``,
        ``forward_passes``, ``backward_passes``, ``cpu_time_s``; those left out stay NULL).
        Times, steps and passes are cumulative since the start of the run. One transaction,
        which also refreshes the run's heartbeat.

        Raises:
            sqlite3.IntegrityError: if the epoch is already recorded or the run does not exist.
            ValueError: for an unknown value name.
        """
        if not isinstance(epoch, int):
            values = {**{k: getattr(epoch, k) for k in _EPOCH_COLUMNS if hasattr(epoch, k)}}
            epoch = epoch.epoch
        unknown = sorted(set(values) - set(_EPOCH_COLUMNS))
        if unknown:
            raise ValueError(f"unknown epoch columns {unknown}; expected some of {_EPOCH_COLUMNS}")
        columns = ", ".join(_EPOCH_COLUMNS)
        placeholders = ", ".join("?" for _ in _EPOCH_COLUMNS)
        row = tuple(values.get(column) for column in _EPOCH_COLUMNS)
        with self._transaction() as connection:
            connection.execute(
                f"INSERT INTO epochs (run_id, epoch, {columns}) VALUES (?, ?, {placeholders})",
                (int(run_id), int(epoch), *row),
            )
            connection.execute(
                "UPDATE runs SET heartbeat_at = ? WHERE id = ?", (time.time(), int(run_id))
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
        rows = self._read(
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
                ``best_test_metric``, ``error``, ``num_threads``, ``cpu_time_s``; those left
                out stay NULL.

        Raises:
            ValueError: for another status, an unknown column, or an unknown ``run_id``.
            StoreError: if the run is missing because the file is damaged.
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
            missing = cursor.rowcount != 1
        if missing:
            if self.path != ":memory:":
                self._raise_if_damaged()  # a damaged page hides rows: say so, not "no run"
            raise ValueError(f"no run with id {run_id}")

    # -- reading ------------------------------------------------------------------------------

    def _read(self, sql: str, parameters: Any = ()) -> list[sqlite3.Row]:
        try:
            return self._connection.execute(sql, parameters).fetchall()
        except sqlite3.ProgrammingError:
            raise  # a closed store: the caller's bug, not the file's
        except sqlite3.DatabaseError as error:
            if self.path != ":memory:" and not isinstance(error, sqlite3.OperationalError):
                self._raise_if_damaged()
            raise _sqlite_error(self.path, error) from None

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
        rows = self._read(f"SELECT * FROM runs{where} ORDER BY id", parameters)
        return [self._run_dict(row) for row in rows]

    def run(self, run_id: int) -> dict[str, Any] | None:
        """One run as a dict, or ``None`` if there is no such id."""
        rows = self._read("SELECT * FROM runs WHERE id = ?", (int(run_id),))
        return self._run_dict(rows[0]) if rows else None

    def run_by_key(self, run_key: str | RunConfig) -> dict[str, Any] | None:
        """The run with this run key (see :func:`make_run_key`) or config, or ``None``.

        A :class:`RunConfig` also finds a run stored under one of its legacy keys.
        """
        keys = (run_key,) if isinstance(run_key, str) else (run_key.key, *run_key.legacy_keys)
        for key in keys:
            rows = self._read("SELECT * FROM runs WHERE run_key = ?", (key,))
            if rows:
                return self._run_dict(rows[0])
        return None

    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """A run's recorded epochs as dicts, ordered by epoch (0 = before training)."""
        rows = self._read("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (int(run_id),))
        return [dict(row) for row in rows]

    def is_finished(self, run_key: str | RunConfig) -> bool:
        """Whether the run with this key (or config) is done (``finished`` or ``diverged``)."""
        row = self.run_by_key(run_key)
        return row is not None and row["status"] in DONE_STATUSES

    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
        run = dict(row)
        run["hyperparameters"] = json.loads(run["hyperparameters"])
        if run["higher_is_better"] is not None:
            run["higher_is_better"] = bool(run["higher_is_better"])
        return run
