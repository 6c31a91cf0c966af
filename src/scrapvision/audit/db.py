"""Database engine and schema migrations for the audit store.

SQLite runs in WAL mode with synchronous=NORMAL: readers (the QA page) never block the
writer, and a commit survives a process kill (only a power loss can cost the last
commits). Several processes may write one SQLite file; they take turns via busy_timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

SCRIPT_LOCATION = "scrapvision.audit:migrations"
SQLITE_BUSY_TIMEOUT_MS = 5_000


# libpq: a server that does not answer the connect, or a network that drops the connection
# silently, is an error within seconds (retried, counted), not a write that hangs for ever.
_POSTGRESQL_TIMEOUTS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                        "keepalives_interval": 5, "keepalives_count": 3}


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine (None: another database, or in memory)."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    return Path(engine.url.database)


def make_engine(url: str) -> Engine:
    """Engine for `url`; creates the SQLite file's folder and sets its pragmas."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, connect_args=_POSTGRESQL_TIMEOUTS)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (Alembic `upgrade`); a no-op when already there."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    with _sqlite_file_lock(engine), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (no-op for other databases).

    pysqlite runs DDL outside a transaction, so worker processes starting together on a
    fresh file would otherwise both create the tables and all but one fail to start.
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
