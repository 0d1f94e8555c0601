"""Which store a server uses: SQLite in its data directory (the default), or PostgreSQL.

:func:`open_backend` picks one from ``--database``; both implement
:class:`prepsync.server.storeapi.Backend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from prepsync.config import TableSpec
from prepsync.errors import ConfigError
from prepsync.server.diff import TableDiff, table_diff
from prepsync.server.sessions import Session, SessionDatabase
from prepsync.server.store import Store, iter_table_csv, open_store, snapshot, table_state
from prepsync.server.storeapi import Backend

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


class SqliteBackend:
    """``<data>/sessions.sqlite3`` (sessions) and ``<data>/store.sqlite3`` (rows): two files,
    because SQLite has one writer per database and the API must open sessions while the worker
    holds the store's write lock for a whole session. One server process per data directory."""

    name = "sqlite"

    def __init__(self, data_dir: Path) -> None:
        self.sessions_path = data_dir / "sessions.sqlite3"
        self.store_path = data_dir / "store.sqlite3"

    # One process: its in-memory commit locks and sealed set (ServerState) guard the sessions.
    several_processes = False

    def lock_sessions(self, session_ids: Sequence[str], exclusive: bool) -> Callable[[], None]:
        raise AssertionError("one process per SQLite data directory: nothing to lock")

    def session_database(self) -> SessionDatabase:
        return SessionDatabase(self.sessions_path)

    def resource_store(self) -> Store:
        return open_store(self.store_path)

    @contextmanager
    def review(
        self, session: Session, spec: TableSpec, path: Path, after: bytes | None
    ) -> Iterator[TableDiff]:
        with snapshot(self.store_path) as connection:
            stored = table_state(connection, session.connector, spec.name)
            yield table_diff(connection, stored, spec, path, session.mode, session.separator, after)

    def resources_csv(
        self, connector: str, name: str, default_header: Sequence[str]
    ) -> Iterator[bytes]:
        return iter_table_csv(self.store_path, connector, name, default_header)

    def table_counts(self) -> dict[tuple[str, str], int]:
        from prepsync.server.store import table_counts

        return table_counts(self.store_path)


def is_postgresql(database: str) -> bool:
    return database.startswith(POSTGRESQL_SCHEMES)


def open_backend(database: str | None, data_dir: Path) -> Backend:
    """The store named by ``--database`` (None: SQLite in ``data_dir``); ConfigError when it
    cannot be used (an unknown scheme, an unreachable or unfit PostgreSQL database)."""
    if database is None or database == "":
        return SqliteBackend(data_dir)
    if not is_postgresql(database):
        raise ConfigError(
            "--database: expected a postgresql://... URL (without it, the store is SQLite in "
            "the data directory)"
        )
    from prepsync.server.pgstore import PgBackend

    return PgBackend(database, data_dir)
