"""The results store: one row per run, one row per finished epoch, in SQL through SQLAlchemy.

Where it lives is one string: a file path (``results.db``; SQLite, embedded, nothing to set
up), ``":memory:"`` for a throw-away store, or a database URL (``postgresql://user@host/db``,
``sqlite:///path``) so that many machines write to one store. Every statement goes through
one SQLAlchemy layer; what differs by dialect is only how the store is recognised (SQLite:
``PRAGMA application_id`` and ``user_version``; a server: the one-row ``torchvalley_store``
table) and how a run is claimed atomically (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``LOCK
TABLE runs IN SHARE ROW EXCLUSIVE MODE`` inside the claiming transaction).

The store is what makes a sweep resumable. Every run is identified by a *run key*, a hash of
what determines its numbers (task, optimizer spec label, seed, data seed, epochs, batch size):

* a run whose row says ``finished`` or ``diverged`` is done, and :meth:`Store.begin_run`
  returns ``None`` so the runner skips it;
* a row that says ``failed`` (it raised), or ``running`` with an owner that is gone (the
  process was killed), is deleted together with its epochs, and the run starts from scratch;
* a row that says ``running`` and whose owner is alive belongs to another sweep: it is left
  alone and :meth:`Store.begin_run` returns ``None``.

Claiming is one transaction that holds the write lock, so copies of one sweep (or the workers
of a parallel sweep, on one machine or many) share its runs instead of stealing them from each
other. The owner is ``host:pid:start`` (the process start time guards against a reused pid); on
the same host a dead process is detected at once, a run owned by another host counts as
abandoned once its last heartbeat (written with each epoch) is :data:`CLAIM_TIMEOUT_S` old, or
at once when the sweep that handed the run to a worker saw that worker die and releases its
*claim* (:meth:`Store.release_claim`; the claim token is stored with the run).

Each finished epoch is written in its own transaction, and so is the end of a run, so a killed
sweep loses at most the epoch in progress. An SQLite file is opened in WAL mode with a busy
timeout, so a report can read it while a sweep writes to it.

Schema versions and migrations: :data:`SCHEMA_VERSION` is the version this module writes;
:data:`MIGRATIONS` lists, for each version, the columns it added (tables it added are created
by the schema itself). A store of an older version of ours is upgraded in place, in one
transaction, its rows kept. Opening refuses what is not a store of ours (:class:`StoreError`,
one line): a file that is not SQLite, an SQLite file with other tables (a store carries
``PRAGMA application_id``), a database whose ``runs`` table we did not write, a store of a
newer schema, a damaged file (``PRAGMA quick_check`` runs when an operation fails).

NaN is stored as NULL on every backend (SQLite cannot store it): a diverged run's NaN loss
reads back as ``None`` (infinities are kept).

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
import math
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
    "APPLICATION_NAME",
    "CLAIM_TIMEOUT_S",
    "DONE_STATUSES",
    "MIGRATIONS",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "RunConfig",
    "Store",
    "StoreError",
    "database_url",
    "is_url",
    "make_run_key",
    "platform_string",
    "utc_now",
]

#: Version of the schema below (SQLite: ``PRAGMA user_version``; a server: the
#: ``torchvalley_store`` table); bump it on any change and add its :data:`MIGRATIONS` entry.
SCHEMA_VERSION = 4
#: ``PRAGMA application_id`` of a torchvalley SQLite store ("TVal"), set from version 3 on.
APPLICATION_ID = 0x5456616C
#: What the ``torchvalley_store`` table of a store on a database server says it is.
APPLICATION_NAME = "torchvalley results store"
#: Seconds after its last heartbeat that a ``running`` row of another host counts as abandoned.
CLAIM_TIMEOUT_S = 3600.0

#: Every value ``runs.status`` can take.
RUN_STATUSES = ("running", "finished", "diverged", "failed")

#: Statuses of runs that are complete and are not run again.
DONE_STATUSES = frozenset({"finished", "diverged"})

#: The migrations: for each schema version, the ``(table, column definition)`` pairs it added
#: to tables that existed before it. Tables a version added (``measurements`` in 2, ``tuning``
#: in 4) are created by the schema itself. Upgrading from version ``v`` applies every entry
#: above ``v`` in order, skipping a column that is already there.
MIGRATIONS: dict[int, tuple[tuple[str, str], ...]] = {
    2: (),
    3: (
        ("runs", "owner TEXT"),
        ("runs", "heartbeat_at DOUBLE PRECISION"),
        ("runs", "num_threads INTEGER"),
        ("runs", "cpu_time_s DOUBLE PRECISION"),
        ("epochs", "cpu_time_s DOUBLE PRECISION"),
    ),
    4: (("runs", "claim TEXT"),),
}
# SQLite stores of version 1 and 2 predate application_id; they are recognised by their tables.
_UPGRADABLE_VERSIONS = tuple(range(1, SCHEMA_VERSION))

# Tables of ours; an SQLite file holding any other table is not a store of ours.
_OUR_TABLES = frozenset({"runs", "epochs", "measurements", "tuning"})

_SQLITE_HEADER = b"SQLite format 3\x00"

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

# Columns of the tuning table (one row per tuned (task, method) study) other than its id.
_TUNING_COLUMNS = (
    "study",
    "task",
    "optimizer",
    "base_spec",
    "search_space",
    "budget",
    "epochs",
    "sampler",
    "pruner",
    "objective",
    "direction",
    "n_complete",
    "n_pruned",
    "n_failed",
    "best_params",
    "best_value",
    "tuned_spec",
    "importances",
    "storage",
    "finished_at",
)
_TUNING_JSON = frozenset({"search_space", "best_params", "importances"})


class StoreError(RuntimeError):
    """A results store that cannot be used: not ours, newer, damaged, unwritable or full.

    The message is one line naming the file (or the URL, password hidden) and what to do.
    """


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether a store location is a database URL (``postgresql://...``) rather than a path."""
    return "://" in str(location)


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
    return _no_nan(float(value.item() if isinstance(value, torch.Tensor) else value))


def _no_nan(value: Any) -> Any:
    """NaN as ``None``: what SQLite does by itself, done for every backend."""
    return None if isinstance(value, float) and math.isnan(value) else value


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


def _sqlite_error(path: str, error: BaseException) -> StoreError:
    text = str(error)
    if "disk is full" in text or "disk I/O" in text:
        return StoreError(
            f"results store {path!r}: {text} (free space and rerun; finished runs are kept)"
        )
    if "readonly" in text or "unable to open" in text:
        return StoreError(f"results store {path!r} cannot be written: {text}")
    return StoreError(f"results store {path!r}: {text}")


def _server_error(where: str, error: BaseException) -> StoreError:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return StoreError(f"results store {where}: {lines[0] if lines else type(error).__name__}")


def _sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ModuleNotFoundError as error:  # pragma: no cover - an install without the extra
        raise ImportError(
            "the results store needs SQLAlchemy, which is not installed: pip install sqlalchemy "
            "(or pip install -e '.[tune]' from the repository)"
        ) from error
    return sqlalchemy


@functools.lru_cache(maxsize=1)
def _schema() -> Any:
    """The tables, as SQLAlchemy metadata (built on first use: SQLAlchemy loads lazily)."""
    sa = _sqlalchemy()
    metadata = sa.MetaData()

    class Real(sa.types.UserDefinedType):
        """DOUBLE PRECISION, values passed to the driver as they are (SQLite: REAL affinity)."""

        cache_ok = True

        def get_col_spec(self, **_: Any) -> str:
            return "DOUBLE PRECISION"

    real = Real
    # SQLite's AUTOINCREMENT needs exactly "INTEGER PRIMARY KEY"; servers get a 64-bit serial.
    row_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    sa.Table(
        "runs",
        metadata,
        # AUTOINCREMENT: the id of a deleted (redone) run is never given to another run.
        sa.Column("id", row_id, primary_key=True, autoincrement=True),
        sa.Column("run_key", sa.Text, nullable=False, unique=True),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("optimizer", sa.Text, nullable=False),
        sa.Column("spec_label", sa.Text, nullable=False),
        sa.Column("hyperparameters", sa.Text, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("data_seed", sa.BigInteger, nullable=False),
        sa.Column("epochs", sa.Integer, nullable=False),
        sa.Column("batch_size", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.Text, nullable=False),
        sa.Column("finished_at", sa.Text),
        sa.Column("train_time_s", real),
        sa.Column("wall_time_s", real),
        sa.Column("steps", sa.BigInteger),
        sa.Column("forward_passes", sa.BigInteger),
        sa.Column("backward_passes", sa.BigInteger),
        sa.Column("time_to_target_s", real),
        sa.Column("steps_to_target", sa.BigInteger),
        sa.Column("epoch_to_target", sa.Integer),
        sa.Column("train_loss", real),
        sa.Column("test_loss", real),
        sa.Column("test_metric", real),
        sa.Column("best_test_metric", real),
        sa.Column("metric_name", sa.Text, nullable=False),
        sa.Column("higher_is_better", sa.Integer),
        sa.Column("target", real),
        sa.Column("torch_version", sa.Text, nullable=False),
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("owner", sa.Text),
        sa.Column("heartbeat_at", real),
        sa.Column("num_threads", sa.Integer),
        sa.Column("cpu_time_s", real),
        sa.Column("claim", sa.Text),
        sa.CheckConstraint(
            "status IN ('running', 'finished', 'diverged', 'failed')", name="runs_status"
        ),
        sa.Index("runs_task_status", "task", "status"),
        sqlite_autoincrement=True,
    )
    sa.Table(
        "epochs",
        metadata,
        sa.Column(
            "run_id",
            row_id,
            sa.ForeignKey("runs.id", ondelete="CASCADE"),
            primary_key=True,
            nullable=False,
        ),
        sa.Column("epoch", sa.Integer, primary_key=True, nullable=False),
        sa.Column("train_loss", real),
        sa.Column("train_metric", real),
        sa.Column("test_loss", real),
        sa.Column("test_metric", real),
        sa.Column("train_time_s", real),
        sa.Column("wall_time_s", real),
        sa.Column("steps", sa.BigInteger),
        sa.Column("forward_passes", sa.BigInteger),
        sa.Column("backward_passes", sa.BigInteger),
        sa.Column("cpu_time_s", real),
    )
    sa.Table(
        "measurements",
        metadata,
        sa.Column(
            "run_id",
            row_id,
            sa.ForeignKey("runs.id", ondelete="CASCADE"),
            primary_key=True,
            nullable=False,
        ),
        sa.Column("epoch", sa.Integer, primary_key=True, nullable=False),
        sa.Column("name", sa.Text, primary_key=True, nullable=False),
        sa.Column("value", real),
    )
    integers = {"budget", "epochs", "n_complete", "n_pruned", "n_failed"}
    sa.Table(
        "tuning",
        metadata,
        sa.Column("id", row_id, primary_key=True, autoincrement=True),
        *(
            sa.Column(
                name,
                sa.Integer if name in integers else real if name == "best_value" else sa.Text,
                unique=name == "study",
                nullable=name not in ("study", "task", "optimizer"),
            )
            for name in _TUNING_COLUMNS
        ),
        sqlite_autoincrement=True,
    )
    # On a database server the store says what it is here; SQLite files use PRAGMAs instead.
    sa.Table(
        "torchvalley_store",
        metadata,
        sa.Column("application", sa.Text, nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
    )
    return metadata


def database_url(location: str) -> Any:
    """The SQLAlchemy URL of a store location given as a URL; ``postgresql://`` picks the
    PostgreSQL driver that is installed (psycopg 3, else psycopg2)."""
    import importlib.util

    url = _sqlalchemy().make_url(location)
    if (
        url.drivername == "postgresql"
        and importlib.util.find_spec("psycopg") is None
        and importlib.util.find_spec("psycopg2") is not None
    ):
        url = url.set(drivername="postgresql+psycopg2")
    return url


def _table(name: str) -> Any:
    return _schema().tables[name]


class Store:
    """The results database: an SQLite file (default), ``":memory:"``, or a database URL.

    Usable as a context manager, which closes the connection on exit.

    Args:
        path: database file (created with its parent folder if missing), ``":memory:"``, or a
            SQLAlchemy URL (``postgresql://user:password@host:5432/db``; ``sqlite:///file``).
        timeout: seconds to wait for a lock held by another connection (SQLite), or to
            connect (a server), before giving up.

    Raises:
        StoreError: (a ``RuntimeError``) if the path is empty or cannot be created, the server
            cannot be reached, or the database is not a store of ours (not SQLite, other
            tables, a ``runs`` table we did not write), of a newer schema, or damaged.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise StoreError(
                f"Invalid results store: {path!r} (a file name, ':memory:' or a database URL)"
            )
        self.path = str(path)
        if not self.path.strip():
            raise StoreError("empty results store path; give a file name (or ':memory:')")
        sa = _sqlalchemy()
        self._db: Any = None
        self._engine: Any = None
        url = database_url(self.path) if is_url(self.path) else None
        if url is not None and url.get_backend_name() == "sqlite":
            self.path = url.database or ":memory:"  # a file after all
            url = None
        self.dialect = "sqlite" if url is None else url.get_backend_name()
        self._where = (
            repr(self.path) if url is None else repr(url.render_as_string(hide_password=True))
        )
        if url is None:
            if self.path != ":memory:":
                self._check_file()
            self._open_sqlite(sa, timeout)
        else:
            self._open_server(sa, url, timeout)

    # -- opening ------------------------------------------------------------------------------

    def _open_sqlite(self, sa: Any, timeout: float) -> None:
        database = self.path

        def connect() -> sqlite3.Connection:
            # isolation_level=None: no implicit transactions; every write opens its own BEGIN
            # IMMEDIATE ... COMMIT (the "begin" hook below), so the boundaries are ours.
            return sqlite3.connect(
                database, timeout=timeout, isolation_level=None, check_same_thread=False
            )

        try:
            self._engine = sa.create_engine(
                "sqlite://", creator=connect, poolclass=sa.pool.StaticPool
            )

            @sa.event.listens_for(self._engine, "begin")
            def _begin(connection: Any) -> None:
                # IMMEDIATE takes the write lock up front, so a check-then-write (begin_run)
                # cannot interleave with another writer; reads begin DEFERRED.
                connection.exec_driver_sql(f"BEGIN {connection.info.get('begin', 'IMMEDIATE')}")

            self._db = self._engine.connect()
            self._connection.execute("PRAGMA foreign_keys = ON")
            self._create_schema()
            # WAL lets readers (a report) and one writer (a sweep) work at the same time.
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute("PRAGMA synchronous = NORMAL")
        except StoreError:
            self.close()
            raise
        except (sqlite3.DatabaseError, sa.exc.DBAPIError) as error:
            error = getattr(error, "orig", None) or error
            damage = self._damage() if self._db is not None else None
            self.close()
            if damage is not None or "malformed" in str(error) or "not a database" in str(error):
                raise StoreError(
                    f"results store {self._where} is damaged ({damage or error}); restore it "
                    "from a backup or use a new file"
                ) from None
            raise _sqlite_error(self.path, error) from None

    def _open_server(self, sa: Any, url: Any, timeout: float) -> None:
        connect_args = (
            {"connect_timeout": max(1, int(timeout))} if self.dialect == "postgresql" else {}
        )
        try:
            self._engine = sa.create_engine(
                url, poolclass=sa.pool.NullPool, connect_args=connect_args
            )
            self._db = self._engine.connect()
            self._create_schema()
        except StoreError:
            self.close()
            raise
        except sa.exc.NoSuchModuleError as error:
            self.close()
            raise ImportError(f"results store {self._where}: {error}") from None
        except (sa.exc.DBAPIError, sa.exc.ArgumentError) as error:
            self.close()
            raise _server_error(self._where, getattr(error, "orig", None) or error) from None

    @property
    def _connection(self) -> Any:
        """The driver's own connection (``sqlite3.Connection`` for a file), for PRAGMAs."""
        if self._db is None or self._db.closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed results store.")
        return self._db.connection.dbapi_connection

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
            if self.dialect == "sqlite":
                version = self._sqlite_identity(connection)
            else:
                version = self._server_identity(connection)
            ours = _OUR_TABLES if self.dialect == "sqlite" else {*_OUR_TABLES, "torchvalley_store"}
            tables = [table for name, table in _schema().tables.items() if name in ours]
            _schema().create_all(connection, tables=tables)
            if 0 < version < SCHEMA_VERSION:
                self._migrate(connection, version)
            if self.dialect == "sqlite":
                connection.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
            else:
                info = _table("torchvalley_store")
                connection.execute(info.delete())
                connection.execute(
                    info.insert().values(
                        application=APPLICATION_NAME, schema_version=SCHEMA_VERSION
                    )
                )

    def _migrate(self, connection: Any, version: int) -> None:
        """Apply :data:`MIGRATIONS` above ``version`` (inside the opening transaction)."""
        sa = _sqlalchemy()
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for table, column in MIGRATIONS[step]:
                existing = {c["name"] for c in sa.inspect(connection).get_columns(table)}
                if column.split()[0] not in existing:
                    connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column}")

    def _sqlite_identity(self, connection: Any) -> int:
        """The schema version of an SQLite file of ours (0: a new file); refuse anything else."""
        version = connection.exec_driver_sql("PRAGMA user_version").scalar()
        application = connection.exec_driver_sql("PRAGMA application_id").scalar()
        tables = {
            row[0]
            for row in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if version > SCHEMA_VERSION and application in (0, APPLICATION_ID):
            raise StoreError(
                f"results store {self.path!r} has schema version {version}, written by a "
                f"newer torchvalley (this one reads version {SCHEMA_VERSION}); upgrade "
                "torchvalley or use a new file"
            )
        if not self._is_ours(connection, version, application, tables):
            listed = ", ".join(sorted(tables)) or "none"
            raise StoreError(
                f"{self.path!r} is an SQLite file but not a torchvalley results store "
                f"(tables: {listed}; application_id {application}); it is left untouched, "
                "give another file name"
            )
        return int(version)

    @staticmethod
    def _is_ours(connection: Any, version: int, application: int, tables: set[str]) -> bool:
        """A new (empty) file, or one this module wrote (at this or an older schema)."""
        if application not in (0, APPLICATION_ID):
            return False
        if not tables:
            return version == 0
        if version not in (*_UPGRADABLE_VERSIONS, SCHEMA_VERSION):
            return False
        if version >= 3 and application != APPLICATION_ID:
            return False
        # Versions 1 and 2 predate application_id: recognise them by their tables and columns.
        if not {"runs", "epochs"} <= tables <= _OUR_TABLES:
            return False
        columns = {row[1] for row in connection.exec_driver_sql("PRAGMA table_info(runs)")}
        return {"run_key", "spec_label", "status", "metric_name"} <= columns

    def _server_identity(self, connection: Any) -> int:
        """The schema version of a store on a server (0: none yet); refuse anything else."""
        sa = _sqlalchemy()
        if self.dialect == "postgresql":
            # One opener at a time creates or upgrades the schema (released at commit).
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(1415930220)")
        tables = set(sa.inspect(connection).get_table_names())
        if "torchvalley_store" not in tables:
            clash = sorted(tables & _OUR_TABLES)
            if clash:
                raise StoreError(
                    f"database {self._where} has tables {', '.join(clash)} that torchvalley did "
                    "not write (no torchvalley_store table); it is left untouched, give another "
                    "database"
                )
            return 0
        rows = connection.execute(sa.select(_table("torchvalley_store"))).all()
        if len(rows) != 1 or rows[0].application != APPLICATION_NAME:
            raise StoreError(
                f"database {self._where} has a torchvalley_store table that does not describe a "
                "torchvalley results store; it is left untouched, give another database"
            )
        version = int(rows[0].schema_version)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"results store {self._where} has schema version {version}, written by a newer "
                f"torchvalley (this one reads version {SCHEMA_VERSION}); upgrade torchvalley or "
                "use another database"
            )
        return version

    def _damage(self) -> str | None:
        """``PRAGMA quick_check``'s first complaint, or ``None`` if the file is intact."""
        if self.dialect != "sqlite":
            return None
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

    def _translate(self, error: BaseException) -> BaseException:
        """The error to raise for a driver error: the driver's own integrity and programming
        errors (the caller's bug), a one-line :class:`StoreError` for everything else."""
        original = getattr(error, "orig", None) or error
        if self.dialect == "sqlite":
            if isinstance(original, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                return original
            if self.path != ":memory:" and not isinstance(original, sqlite3.OperationalError):
                damage = self._damage()  # a damaged page: say so, not what it caused
                if damage is not None:
                    return StoreError(
                        f"results store {self.path!r} is damaged ({damage}); restore it from a "
                        "backup or use a new file"
                    )
            return _sqlite_error(self.path, original)
        sa = _sqlalchemy()
        if isinstance(error, sa.exc.IntegrityError):
            return original
        return _server_error(self._where, original)

    @contextlib.contextmanager
    def _transaction(self, *, read: bool = False, lock_runs: bool = False) -> Iterator[Any]:
        """One transaction on the store's connection; SQLite takes the write lock up front
        unless ``read``; ``lock_runs`` serialises run claims on a server."""
        sa = _sqlalchemy()
        if self._db is None or self._db.closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed results store.")
        self._db.info["begin"] = "DEFERRED" if read else "IMMEDIATE"
        try:
            transaction = self._db.begin()
        except sa.exc.DBAPIError as error:
            raise self._translate(error) from None
        try:
            if lock_runs and self.dialect == "postgresql":
                self._db.exec_driver_sql("LOCK TABLE runs IN SHARE ROW EXCLUSIVE MODE")
            yield self._db
            transaction.commit()
        except BaseException as error:
            if transaction.is_active:
                with contextlib.suppress(sa.exc.DBAPIError, sqlite3.Error):
                    transaction.rollback()
            if isinstance(error, sa.exc.DBAPIError | sqlite3.DatabaseError):
                raise self._translate(error) from None
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
        if self._engine is not None:
            with contextlib.suppress(Exception):
                self._engine.dispose()

    # -- writing ------------------------------------------------------------------------------

    def begin_run(
        self,
        config: RunConfig | None = None,
        *,
        metric_name: str,
        higher_is_better: bool | None = None,
        target: float | None = None,
        claim: str | None = None,
        **identity: Any,
    ) -> int | None:
        """Claim a run (status ``running``) and return its id, or ``None`` if it is not ours.

        A previous row with the same run key (or one of ``config.legacy_keys``) that is
        ``finished`` or ``diverged``, or ``running`` in a live process (another sweep executes
        it), makes this return ``None``: the caller skips the run. One that is ``failed``, or
        ``running`` with its owner gone (a killed run), is deleted with its epochs and the run
        starts afresh. One transaction holding the write lock, so two sweeps never claim one
        run.

        Args:
            config: the run's :class:`RunConfig`. The older keyword form (``task=``,
                ``optimizer=``, ``spec_label=``, ``hyperparameters=``, ``seed=``,
                ``data_seed=``, ``epochs=``, ``batch_size=``) is accepted too.
            metric_name, higher_is_better, target: the task's metric, stored with the run.
            claim: a token of the sweep that handed this run to a worker; if the worker dies,
                the sweep calls :meth:`release_claim` with it and the run can be redone at once
                (on any host) instead of after :data:`CLAIM_TIMEOUT_S`.
        """
        if config is None:
            config = RunConfig(**identity)
        elif identity:
            raise TypeError(f"begin_run got a config and {sorted(identity)}")
        sa = _sqlalchemy()
        runs = _table("runs")
        with self._transaction(lock_runs=True) as connection:
            previous = None
            for run_key in (config.key, *config.legacy_keys):
                previous = connection.execute(
                    sa.select(runs.c.id, runs.c.status, runs.c.owner, runs.c.heartbeat_at).where(
                        runs.c.run_key == run_key
                    )
                ).first()
                if previous is not None:
                    break
            if previous is not None:
                if previous.status in DONE_STATUSES:
                    return None
                if previous.status == "running" and _owner_alive(
                    previous.owner, previous.heartbeat_at
                ):
                    return None  # another sweep is executing it right now
                self._delete_runs(connection, [previous.id])
            result = connection.execute(
                runs.insert().values(
                    run_key=config.key,
                    task=config.task,
                    optimizer=config.optimizer,
                    spec_label=config.spec_label,
                    hyperparameters=json.dumps(
                        dict(config.hyperparameters), sort_keys=True, default=_json_default
                    ),
                    seed=int(config.seed),
                    data_seed=int(config.data_seed),
                    epochs=int(config.epochs),
                    batch_size=int(config.batch_size),
                    status="running",
                    started_at=utc_now(),
                    metric_name=metric_name,
                    higher_is_better=None
                    if higher_is_better is None
                    else int(bool(higher_is_better)),
                    target=None if target is None else float(target),
                    torch_version=torch.__version__,
                    platform=platform_string(),
                    owner=_owner(),
                    heartbeat_at=time.time(),
                    claim=claim,
                )
            )
            return int(result.inserted_primary_key[0])

    @staticmethod
    def _delete_runs(connection: Any, ids: list[int]) -> None:
        for name in ("epochs", "measurements"):
            table = _table(name)
            connection.execute(table.delete().where(table.c.run_id.in_(ids)))
        runs = _table("runs")
        connection.execute(runs.delete().where(runs.c.id.in_(ids)))

    def release_claim(self, claim: str) -> int:
        """Delete the ``running`` rows claimed with token ``claim`` (their worker died), with
        their epochs, so the run is redone at once; returns how many. Finished rows stay."""
        sa = _sqlalchemy()
        runs = _table("runs")
        with self._transaction(lock_runs=True) as connection:
            ids = [
                row.id
                for row in connection.execute(
                    sa.select(runs.c.id).where(runs.c.claim == claim, runs.c.status == "running")
                )
            ]
            if ids:
                self._delete_runs(connection, ids)
        return len(ids)

    def record_epoch(self, run_id: int, epoch: Any, **values: Any) -> None:
        """Write one finished epoch of a run (epoch 0 is the evaluation before training).

        ``epoch`` is an :class:`~torchvalley.bench.runner.EpochRecord` (passed whole), or the
        epoch number with the values as keywords (``train_loss``, ``train_metric``,
        ``test_loss``, ``test_metric``, ``train_time_s``, ``wall_time_s``, ``steps``,
        ``forward_passes``, ``backward_passes``, ``cpu_time_s``; those left out stay NULL).
        Times, steps and passes are cumulative since the start of the run. One transaction,
        which also refreshes the run's heartbeat.

        Raises:
            IntegrityError: (the driver's; ``sqlite3.IntegrityError`` for a file) if the epoch
                is already recorded or the run does not exist.
            ValueError: for an unknown value name.
        """
        if not isinstance(epoch, int):
            values = {**{k: getattr(epoch, k) for k in _EPOCH_COLUMNS if hasattr(epoch, k)}}
            epoch = epoch.epoch
        unknown = sorted(set(values) - set(_EPOCH_COLUMNS))
        if unknown:
            raise ValueError(f"unknown epoch columns {unknown}; expected some of {_EPOCH_COLUMNS}")
        row = {column: _no_nan(values.get(column)) for column in _EPOCH_COLUMNS}
        runs = _table("runs")
        with self._transaction() as connection:
            connection.execute(
                _table("epochs").insert().values(run_id=int(run_id), epoch=int(epoch), **row)
            )
            connection.execute(
                runs.update().where(runs.c.id == int(run_id)).values(heartbeat_at=time.time())
            )

    def record_measurements(self, run_id: int, epoch: int, values: dict[str, float]) -> None:
        """Write named measurements (a callback's numbers: lambda_max, trace, ...) taken at the
        end of ``epoch``. One transaction; a name measured twice at one epoch is an error."""
        rows = [
            {"run_id": int(run_id), "epoch": int(epoch), "name": str(name), "value": _real(value)}
            for name, value in values.items()
        ]
        if not rows:
            return
        with self._transaction() as connection:
            connection.execute(_table("measurements").insert(), rows)

    def measurements(self, run_id: int) -> list[dict[str, Any]]:
        """A run's measurements as ``{"epoch", "name", "value"}`` dicts, by epoch then name."""
        table = _table("measurements")
        sa = _sqlalchemy()
        rows = self._read(
            sa.select(table.c.epoch, table.c.name, table.c.value)
            .where(table.c.run_id == int(run_id))
            .order_by(table.c.epoch, table.c.name)
        )
        return [dict(row._mapping) for row in rows]

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
        runs = _table("runs")
        values = {column: _no_nan(value) for column, value in final.items()}
        with self._transaction() as connection:
            result = connection.execute(
                runs.update()
                .where(runs.c.id == int(run_id))
                .values(status=status, finished_at=utc_now(), **values)
            )
            missing = result.rowcount != 1
        if missing:
            if self.path != ":memory:":
                self._raise_if_damaged()  # a damaged page hides rows: say so, not "no run"
            raise ValueError(f"no run with id {run_id}")

    def record_tuning(self, study: str, **fields: Any) -> None:
        """Write (or replace) the summary of one tuning study: ``task``, ``optimizer``,
        ``budget``, ``best_params``, ``tuned_spec``, ``importances``, ... (see
        :mod:`torchvalley.bench.tune`). Dicts are stored as JSON. One transaction."""
        unknown = sorted(set(fields) - set(_TUNING_COLUMNS))
        if unknown:
            raise ValueError(
                f"unknown tuning columns {unknown}; expected some of {_TUNING_COLUMNS}"
            )
        row = {
            name: json.dumps(value, sort_keys=True, default=_json_default)
            if name in _TUNING_JSON and value is not None
            else _no_nan(value)
            for name, value in fields.items()
        }
        table = _table("tuning")
        with self._transaction() as connection:
            connection.execute(table.delete().where(table.c.study == study))
            connection.execute(table.insert().values(study=study, **row))

    def tuning(self, task: str | None = None) -> list[dict[str, Any]]:
        """The tuning studies recorded (JSON columns decoded), in insertion order."""
        sa = _sqlalchemy()
        table = _table("tuning")
        query = sa.select(table).order_by(table.c.id)
        if task is not None:
            query = query.where(table.c.task == task)
        studies = []
        for row in self._read(query):
            study = dict(row._mapping)
            for name in _TUNING_JSON:
                if study[name] is not None:
                    study[name] = json.loads(study[name])
            studies.append(study)
        return studies

    # -- reading ------------------------------------------------------------------------------

    def _read(self, query: Any) -> list[Any]:
        with self._transaction(read=True) as connection:
            return connection.execute(query).all()

    def runs(self, task: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Runs as dicts (column -> value; ``hyperparameters`` decoded), in insertion order.

        Args:
            task: only this task's runs.
            status: only runs with this status.
        """
        sa = _sqlalchemy()
        runs = _table("runs")
        query = sa.select(runs).order_by(runs.c.id)
        if task is not None:
            query = query.where(runs.c.task == task)
        if status is not None:
            query = query.where(runs.c.status == status)
        return [self._run_dict(row) for row in self._read(query)]

    def run(self, run_id: int) -> dict[str, Any] | None:
        """One run as a dict, or ``None`` if there is no such id."""
        sa = _sqlalchemy()
        runs = _table("runs")
        rows = self._read(sa.select(runs).where(runs.c.id == int(run_id)))
        return self._run_dict(rows[0]) if rows else None

    def run_by_key(self, run_key: str | RunConfig) -> dict[str, Any] | None:
        """The run with this run key (see :func:`make_run_key`) or config, or ``None``.

        A :class:`RunConfig` also finds a run stored under one of its legacy keys.
        """
        sa = _sqlalchemy()
        runs = _table("runs")
        keys = (run_key,) if isinstance(run_key, str) else (run_key.key, *run_key.legacy_keys)
        for key in keys:
            rows = self._read(sa.select(runs).where(runs.c.run_key == key))
            if rows:
                return self._run_dict(rows[0])
        return None

    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """A run's recorded epochs as dicts, ordered by epoch (0 = before training)."""
        sa = _sqlalchemy()
        table = _table("epochs")
        rows = self._read(
            sa.select(table).where(table.c.run_id == int(run_id)).order_by(table.c.epoch)
        )
        return [dict(row._mapping) for row in rows]

    def is_finished(self, run_key: str | RunConfig) -> bool:
        """Whether the run with this key (or config) is done (``finished`` or ``diverged``)."""
        row = self.run_by_key(run_key)
        return row is not None and row["status"] in DONE_STATUSES

    @staticmethod
    def _run_dict(row: Any) -> dict[str, Any]:
        run = dict(row._mapping)
        run["hyperparameters"] = json.loads(run["hyperparameters"])
        if run["higher_is_better"] is not None:
            run["higher_is_better"] = bool(run["higher_is_better"])
        return run
