"""A throw-away PostgreSQL server for tests and measurements, started from Python (``pgserver``).

``pgserver`` ships PostgreSQL binaries in its wheel and serves them on a Unix socket in a folder
of ours; nothing is installed system-wide (run as root, it starts the server as an unprivileged
user of its own). :func:`postgres_server` raises :class:`PostgresUnavailable` with the reason
where it is missing or the server cannot start, so a test can skip with that reason.

Example:
    >>> with postgres_server(folder) as url:  # doctest: +SKIP
    ...     store = Store(fresh_database(url))
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PostgresUnavailable", "fresh_database", "postgres_server"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (the message says why)."""


@contextlib.contextmanager
def postgres_server(folder: str | os.PathLike[str]) -> Iterator[str]:
    """Start a PostgreSQL server with its data in ``folder``; yield its URL; stop it after.

    Raises:
        PostgresUnavailable: ``pgserver`` is not installed, or the server did not start.
    """
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver
    except ModuleNotFoundError as error:
        raise PostgresUnavailable(
            "pgserver is not installed (pip install pgserver, or the cluster extra)"
        ) from error
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(folder, cleanup_mode="stop")
    except Exception as error:
        raise PostgresUnavailable(
            f"the PostgreSQL server did not start: {type(error).__name__}: {error}"
        ) from error
    try:
        yield server.get_uri()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def fresh_database(url: str) -> str:
    """Create an empty database on the server of ``url`` and return its URL."""
    import sqlalchemy as sa

    from torchvalley.bench.store import database_url

    url = database_url(url)
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        engine.dispose()
    return sa.make_url(url).set(database=name).render_as_string(hide_password=False)
