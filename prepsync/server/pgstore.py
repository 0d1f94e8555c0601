"""The PostgreSQL store (``prepsync serve --database postgresql://...``).

Sessions and rows live in one database, so one transaction holds a session's rows, its
``applied`` mark and its final state: there is no "applied, state not yet recorded" window.
Any number of server processes may share the database (and one data directory, where the
uploads are: see :meth:`PgBackend._check_data_dir`).

Layout:

* schema ``prepsync``: ``sessions`` (as in SQLite's ``sessions.sqlite3``), ``applied``,
  ``tables`` (per connector table: the stored header, key columns, row count and stored links)
  and ``instance`` (the data directory's id).
* one schema per connector, named as the connector, holding one table per ConnectionTable,
  named as its first spelling: a ``text COLLATE "C"`` column per kept column, named and ordered
  as the header of the file that last loaded it, the key as primary key. ``COLLATE "C"``
  compares UTF-8 bytes, which is the REFERENCE §2 key order, so ``ORDER BY`` the key columns is
  the order of the files and of ``GET .../resources``. An empty value is stored as NULL.

Bulk paths: a complete load into an empty table ``COPY``\\ s the session's file (its CSV bytes
as they are) into the table. Into a loaded table, the SQLite store's native merge-join reads the
file against the stored rows read back in key order (a binary ``COPY`` out, parsed in C from
libpq: :func:`_stored_changes`); only its changes, counted on the way, are ``COPY``\\ ed into a
changes table, then three statements delete, update and insert. A file in another column layout
goes through a staging table and one ``FULL JOIN`` instead, and the table is rebuilt.

A delta is ``COPY``\\ ed into staging, one join with the table finds each command's stored row,
one aggregate validates and counts, then three statements apply it. A delta the aggregate finds
anything wrong with (a bad command, an insert of a stored key, a key twice...) is applied row by
row instead, by the same code as SQLite's, which stops at the first bad line with the same
message.

Claiming: each worker takes the lowest queued head of any connector with ``FOR UPDATE SKIP
LOCKED`` and a session-level advisory lock on the connector, held by its connection until the
outcome is recorded. A process that dies drops its connections and with them the lock; any
worker then finds the ``processing`` session with a free lock and queues it again (its
transaction rolled back with the connection).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from prepsync._upload import CopyRows, UploadReader, native_copy_problem
from prepsync.config import TableSpec
from prepsync.errors import ConfigError
from prepsync.protocol import (
    DELETE,
    DONE,
    FINAL_STATES,
    FULL_MODES,
    INSERT,
    PROCESSING,
    QUEUED,
    UPDATE,
)
from prepsync.server.diff import (
    BATCH_ROWS,
    Change,
    DataError,
    TableDiff,
    Upload,
    delta_changes,
    full_changes,
    open_table_file,
)
from prepsync.server.http import ApiError
from prepsync.server.sessions import Session, SessionDatabase
from prepsync.server.store import decode_key, encode_key, format_record
from prepsync.server.thresholds import Association, ChangeCounter

SCHEMA = "prepsync"
# Where a session's initial loads on their own connections put their tables, committed, until
# the session's transaction moves them into the connector's schema (see PgWork.load_ahead).
LOAD_SCHEMA = "prepsync_load"
DATA_ID_FILE = "database.id"
# PostgreSQL cuts longer identifiers (a schema or table name) to this many bytes.
MAX_IDENTIFIER = 63
# The first key of the two-key advisory locks this store takes (the second is the connector's
# hash): "prsp", so other applications' advisory locks in the same database do not collide.
LOCK_SPACE = 0x70727370
# The first key of the per-session locks ("prss"; the second is the session id's hash): uploads
# hold it shared; a commit, a cancel and an opening that supersedes it exclusive (see
# PgBackend.lock_sessions).
SESSION_LOCK_SPACE = 0x70727373
COPY_BLOCK = 1 << 20
CHECK_ROWS = 1 << 16  # rows the native reader checks per call
# The worker's session settings (memory of one PostgreSQL backend, only while it applies).
WORKER_TEMP_BUFFERS = "64MB"
WORKER_WORK_MEM = "64MB"
REVIEW_FETCH = 4096
# A complete load's changes wait in memory up to this size, then in a temporary file.
SPOOL_MEMORY = 32 * 1024 * 1024
STREAM_PIECE = 256 * 1024

_SCHEMA_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE SCHEMA IF NOT EXISTS {LOAD_SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.sessions (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    connector TEXT NOT NULL,
    agent TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    forced INTEGER NOT NULL DEFAULT 0,
    files TEXT,
    summary TEXT,
    opened_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    active_at DOUBLE PRECISION NOT NULL,
    separator TEXT NOT NULL DEFAULT ',',
    client TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_connector ON {SCHEMA}.sessions (connector, seq);
CREATE INDEX IF NOT EXISTS sessions_by_state ON {SCHEMA}.sessions (state, seq);
CREATE TABLE IF NOT EXISTS {SCHEMA}.applied (
    session_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.tables (
    connector TEXT NOT NULL,
    name TEXT NOT NULL,
    header TEXT,
    key_columns TEXT,
    row_count BIGINT NOT NULL DEFAULT 0,
    links TEXT,
    PRIMARY KEY (connector, name)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.instance (
    data_id TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL
);
"""


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit) whose unqualified names are the
    store's own tables (the sessions code is shared with SQLite)."""
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            client_encoding="utf8",
            options=f"-c search_path={SCHEMA}",
            application_name="prepsync",
        )
    except psycopg.Error as error:
        raise ConfigError(f"--database: cannot connect: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _columns(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


def _positional(prefix: str, count: int) -> list[str]:
    """Staging tables name their columns by position: a header name never collides with the
    store's own columns, whatever it is."""
    return [f"{prefix}{index}" for index in range(count)]


def _null_empty(values: Sequence[str]) -> list[str | None]:
    return [value if value != "" else None for value in values]


def _empty_null(values: Sequence[str | None]) -> list[str]:
    return ["" if value is None else value for value in values]


def _lock_key(connector: str) -> sql.Composed:
    return sql.SQL("{}, hashtext({})").format(sql.Literal(LOCK_SPACE), sql.Literal(connector))


# ------------------------------------------------------------------------------------ sessions


class _SessionConnection:
    """What :class:`~prepsync.server.sessions.SessionDatabase` asks of its connection (execute
    with ``?`` parameters, ``in_transaction``, close), on psycopg. A broken connection (the
    database restarted) is opened again at the next statement outside a transaction."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection = connect(url)
        self._translated: dict[str, str] = {}

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        if self._connection.closed and self._connection.info.transaction_status in (
            TransactionStatus.IDLE,
            TransactionStatus.UNKNOWN,
        ):
            self._connection = connect(self._url)
        translated = self._translated.get(statement)
        if translated is None:
            # SQLite's "IS ?" compares NULLs as equal; PostgreSQL spells it IS NOT DISTINCT FROM.
            translated = statement.replace("IS ?", "IS NOT DISTINCT FROM ?").replace("?", "%s")
            self._translated[statement] = translated
        return self._connection.execute(translated, tuple(parameters))

    @property
    def closed(self) -> bool:
        return self._connection.closed

    @property
    def in_transaction(self) -> bool:
        return self._connection.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self._connection.close()


class PgSessionDatabase(SessionDatabase):
    """The sessions in ``prepsync.sessions``, with :class:`SessionDatabase`'s transitions (each a
    conditional UPDATE, safe across processes) and a claim that several processes can share."""

    def __init__(self, url: str) -> None:  # no super().__init__: that opens SQLite
        self._pg = _SessionConnection(url)
        self._connection = self._pg  # type: ignore[assignment]
        # Session id -> connector, for the advisory locks this connection holds.
        self._held: dict[str, str] = {}

    def _begin(self) -> None:
        # Multi-statement transitions (open, abandon) read then write: serialized against each
        # other across processes, as SQLite's BEGIN IMMEDIATE does. Single UPDATEs need no lock.
        self._connection.execute("BEGIN")
        self._connection.execute("LOCK TABLE sessions IN SHARE ROW EXCLUSIVE MODE")

    def _try_lock(self, connector: str) -> bool:
        statement = sql.SQL("SELECT pg_try_advisory_lock({})").format(_lock_key(connector))
        row = self._connection.execute(statement.as_string(None)).fetchone()
        return bool(row and row[0])

    def _unlock(self, connector: str) -> None:
        statement = sql.SQL("SELECT pg_advisory_unlock({})").format(_lock_key(connector))
        self._connection.execute(statement.as_string(None))

    def claim_next(self) -> Session | None:
        """The lowest queued head of any connector whose lock is free, moved to processing.

        Its connector's advisory lock stays with this connection until :meth:`release`: no
        other process applies a session of that connector meanwhile, and a process that dies
        frees it with its connection. ``SKIP LOCKED``: two workers claiming at once never wait
        for, nor take, the same row.
        """
        final = ",".join("?" * len(FINAL_STATES))
        self._connection.execute("BEGIN")
        # The table lock the claim's UPDATE needs, taken before its row locks: taken after
        # them, an opening holding the table (see _begin) and cancelling the row the claim
        # has locked would wait for the claim while the claim waits for it (a deadlock, which
        # PostgreSQL ends by failing one of them: the opening answered 500). ROW EXCLUSIVE
        # does not conflict with itself: workers still claim side by side (SKIP LOCKED).
        self._connection.execute("LOCK TABLE sessions IN ROW EXCLUSIVE MODE")
        locked: str | None = None
        claimed: str | None = None
        try:
            rows = self._connection.execute(
                "SELECT s.id, s.connector FROM sessions s WHERE s.state = ? AND NOT EXISTS "
                "(SELECT 1 FROM sessions e WHERE e.connector = s.connector AND e.seq < s.seq "
                f"AND e.state NOT IN ({final})) ORDER BY s.seq FOR UPDATE OF s SKIP LOCKED",
                (QUEUED, *FINAL_STATES),
            ).fetchall()
            for session_id, connector in rows:
                if not self._try_lock(connector):
                    continue  # another process applies a session of this connector
                locked = connector
                if self._transition(session_id, (QUEUED,), PROCESSING):
                    claimed = session_id
                    break
                self._unlock(connector)
                locked = None
            self._connection.execute("COMMIT")
        except BaseException:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            if locked is not None:
                self._unlock(locked)
            raise
        if claimed is None:
            return None
        assert locked is not None
        self._held[claimed] = locked
        return self.get(claimed)

    def orphans(self) -> list[Session]:
        """``processing`` sessions whose connector lock nobody holds: their worker died (its
        transaction rolled back with its connection). Each is returned with the lock taken."""
        found: list[Session] = []
        for session in self.processing():
            if session.id in self._held or session.connector in self._held.values():
                continue
            if not self._try_lock(session.connector):
                continue  # a live worker is applying it
            current = self.get(session.id)
            if current is not None and current.state == PROCESSING:
                self._held[current.id] = current.connector
                found.append(current)
            else:  # its worker finished it between the two reads
                self._unlock(session.connector)
        return found

    def release(self, session: Session) -> None:
        connector = self._held.pop(session.id, None)
        if connector is not None and not self._pg.closed:
            self._unlock(connector)


# --------------------------------------------------------------------------------------- rows


@dataclass
class _Table:
    """A connector table as ``prepsync.tables`` records it."""

    connector: str
    name: str
    header: list[str] | None  # None until a session loads it
    key_columns: list[str] | None
    row_count: int
    links: dict[str, int] = field(default_factory=dict)

    @property
    def relation(self) -> sql.Identifier:
        return _ident(self.connector, self.name)


def _read_table(connection: psycopg.Connection[Any], connector: str, name: str) -> _Table | None:
    row = connection.execute(
        "SELECT header, key_columns, row_count, links FROM prepsync.tables "
        "WHERE connector = %s AND name = %s",
        (connector, name),
    ).fetchone()
    if row is None:
        return None
    return _Table(
        connector,
        name,
        None if row[0] is None else json.loads(row[0]),
        None if row[1] is None else json.loads(row[1]),
        int(row[2]),
        {} if row[3] is None else json.loads(row[3]),
    )


def _copy_file(
    connection: psycopg.Connection[Any],
    relation: sql.Composable,
    columns: Sequence[str],
    path: Path,
    separator: str,
) -> int:
    """COPY the session's CSV file (header line skipped) into ``relation``; returns the rows.
    An empty value (quoted or not) becomes NULL."""
    statement = sql.SQL(
        "COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true, DELIMITER {}, FORCE_NULL ({}))"
    ).format(relation, _columns(columns), sql.Literal(separator), _columns(columns))
    with connection.cursor() as cursor:
        with cursor.copy(statement) as copy, path.open("rb") as stream:
            while block := stream.read(COPY_BLOCK):
                copy.write(block)
        return cursor.rowcount


def _copy_rows(
    connection: psycopg.Connection[Any],
    relation: sql.Composable,
    columns: Sequence[str],
    reader: UploadReader,
    freeze: bool = False,
) -> int:
    """COPY the rows of ``reader`` (open, configured, past the header) into ``relation`` as
    binary ``COPY`` data, which the native reader encodes and checks in one pass over the file
    (PostgreSQL then parses no CSV: that parsing, 30-50 MB/s, was most of an initial load);
    returns the rows.

    A bad row is the reader's error (the first bad line), as when the file was checked before
    COPY, even when PostgreSQL refused an earlier row (a NUL, a key too long for its index):
    psycopg ends a COPY that a Python error stopped without raising the server's error, and
    should a COPY fail before the reader is done, the rest of the file is read for a bad line
    before PostgreSQL's refusal is raised.

    ``freeze``: the rows are written frozen (``COPY ... FREEZE``; only into a table created
    in this transaction, whose rows no other transaction can have seen), so no later reader
    rewrites every page to set hint bits, nor does a vacuum to freeze them."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary{})").format(
        relation, _columns(columns), sql.SQL(", FREEZE") if freeze else sql.SQL("")
    )
    reader_error: BaseException | None = None
    try:
        with connection.cursor() as cursor, cursor.copy(statement) as copy:
            while True:
                try:
                    block = reader.copy_block(COPY_BLOCK)
                except BaseException as error:
                    reader_error = error
                    raise
                if not block:
                    break
                copy.write(block)
    except psycopg.Error:
        if reader_error is not None:  # the COPY failed after the reader did
            raise reader_error from None
        while reader.copy_block(COPY_BLOCK):
            pass
        raise
    return reader.rows_read


# What PostgreSQL refuses in a session's data: a value it cannot hold (NUL), a key too long for
# a B-tree index (about 2.7 kB; an OperationalError by its SQLSTATE class, but a property of
# the data: retrying would fail forever), a constraint.
REFUSED_BY_POSTGRESQL = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
)


def _refused(name: str, error: psycopg.Error) -> DataError:
    return DataError(f"{name}: PostgreSQL refused it: {_first_line(error)}")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _load_prefix(connector: str) -> str:
    """The names of a connector's tables loaded ahead start with this (never a bare digit)."""
    return "l" + _digest(connector)


def _primary_key_name(table: str) -> str:
    """The name PostgreSQL gives a table's primary key (the table's name cut to fit)."""
    cut = table.encode("utf-8")[: MAX_IDENTIFIER - len("_pkey")].decode("utf-8", "ignore")
    return cut + "_pkey"


class _Ahead:
    """One table of a complete session loaded into a new table of :data:`LOAD_SCHEMA` by a
    thread on a connection of its own, committed there (see :meth:`PgWork.load_ahead`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.thread: threading.Thread | None = None
        self.header: list[str] | None = None
        self.key_columns: list[str] | None = None
        self.inserted = 0
        self.links: list[int] = []
        self.error: BaseException | None = None
        self._connection: psycopg.Connection[Any] | None = None
        self._cancelled = False
        self._lock = threading.Lock()

    def load(
        self,
        url: str,
        separator: str,
        mode: str,
        spec: TableSpec,
        path: Path,
        counter: ChangeCounter,
    ) -> None:
        try:
            upload, header, positions = open_table_file(path, spec, separator, mode, None)
            reader = upload.native
            assert reader is not None
            try:
                reader.configure(positions, True, counter.link_pairs(header))
                key_columns = [header[position] for position in positions]
                # Its table is new and its own: waiting for a lock would be a bug, so it errs.
                with psycopg.connect(
                    url, client_encoding="utf8", options="-c lock_timeout=60s"
                ) as connection:
                    with self._lock:
                        self._connection = connection
                        if self._cancelled:
                            return
                    relation = _ident(LOAD_SCHEMA, self.name)
                    connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(relation))
                    connection.execute(_create_statement(relation, header, key_columns))
                    # FREEZE: the table is this transaction's own.
                    self.inserted = _copy_rows(connection, relation, header, reader, freeze=True)
                    connection.commit()
            finally:
                reader.close()
            self.header, self.key_columns, self.links = header, key_columns, reader.link_rows
        except BaseException as error:  # raised by apply_table, in the session's order
            self.error = error
        finally:
            with self._lock:
                self._connection = None

    def cancel(self) -> None:
        """Stop the load (from another thread): its transaction rolls back."""
        with self._lock:
            self._cancelled = True
            if self._connection is not None and not self._connection.closed:
                self._connection.cancel()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _create_statement(
    relation: sql.Composable, header: Sequence[str], key_columns: Sequence[str]
) -> sql.Composed:
    definitions = [sql.SQL('{} text COLLATE "C"').format(_ident(column)) for column in header]
    definitions.append(sql.SQL("PRIMARY KEY ({})").format(_columns(key_columns)))
    return sql.SQL("CREATE TABLE {} ({})").format(relation, sql.SQL(", ").join(definitions))


class PgWork:
    """:class:`~prepsync.server.storeapi.TableWork` of the PostgreSQL store."""

    def __init__(self, connection: psycopg.Connection[Any], url: str | None = None) -> None:
        self.connection = connection
        self._url = url  # for loads on connections of their own; None: none
        self._ahead: dict[str, _Ahead] = {}  # by the table's folded name

    # ------------------------------------------------------------------ loads ahead

    def load_ahead(
        self, session: Session, tables: Sequence[tuple[TableSpec, Path, ChangeCounter]]
    ) -> None:
        """Start loading, each on a connection of its own, the tables of a complete session
        that go into an empty table, but the first (which the session's own connection loads
        meanwhile): PostgreSQL then writes them at once, one backend each.

        The rows, the session's state and its applied mark still commit in one transaction:
        each side connection loads a new table in :data:`LOAD_SCHEMA` and commits it there,
        where no reader of the connector's tables looks; :meth:`apply_table` then moves it in
        place of the connector's table, in the session's transaction. What a session rolled
        back or a crash left in :data:`LOAD_SCHEMA` is dropped by :meth:`finish`, or by the
        next session of the connector (which holds the connector's lock, so no other worker
        loads for it meanwhile)."""
        if self._url is None or session.mode not in FULL_MODES:
            return
        prefix = _load_prefix(session.connector)
        leftovers = self.connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND starts_with(tablename, %s)",
            (LOAD_SCHEMA, prefix),
        ).fetchall()
        for (name,) in leftovers:
            self.connection.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(LOAD_SCHEMA, name))
            )
        for spec, path, counter in tables[1:]:
            table = _read_table(self.connection, session.connector, spec.name)
            if table is not None and table.header is not None and table.row_count:
                continue
            # A new name each time: a leftover the session's transaction drops above stays
            # locked until it ends (a session applied again after a crash would meet its own),
            # and a load waiting for that lock would never end.
            ahead = _Ahead(f"{prefix}_{uuid.uuid4().hex[:16]}")
            ahead.thread = threading.Thread(
                target=ahead.load,
                args=(self._url, session.separator, session.mode, spec, path, counter),
                name=f"prepsync-load-{spec.name}",
                daemon=True,
            )
            self._ahead[spec.name.casefold()] = ahead
            ahead.thread.start()

    def _take_ahead(self, table: _Table, ahead: _Ahead, counter: ChangeCounter) -> None:
        """The table loaded ahead, moved in place of ``table`` (empty) in this transaction."""
        ahead.join()
        if ahead.error is not None:
            raise ahead.error
        assert ahead.header is not None and ahead.key_columns is not None
        connection = self.connection
        connection.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_ident(table.connector))
        )
        connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table.relation))
        connection.execute(
            sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                _ident(LOAD_SCHEMA, ahead.name), _ident(table.connector)
            )
        )
        connection.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                _ident(table.connector, ahead.name), _ident(table.name)
            )
        )
        # Its key's index named as CREATE TABLE names it, when that name is free.
        wanted = _primary_key_name(table.name)
        qualified = sql.Identifier(table.connector, wanted).as_string(connection)
        free = connection.execute("SELECT to_regclass(%s) IS NULL", (qualified,)).fetchone()
        if free is not None and free[0]:
            connection.execute(
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    table.relation, _ident(_primary_key_name(ahead.name)), _ident(wanted)
                )
            )
        table.header, table.key_columns, table.row_count = ahead.header, ahead.key_columns, 0
        counter.add(ahead.inserted, links=[(links, 0) for links in ahead.links])

    def finish(self, committed: bool) -> None:
        """After the session's transaction: the loads ahead stopped (when it did not commit)
        and waited for; the tables of those it did not move in dropped."""
        aheads, self._ahead = list(self._ahead.values()), {}
        if not aheads:
            return
        for ahead in aheads:
            if not committed:
                ahead.cancel()
            ahead.join()
        if committed or self._url is None:
            return
        try:
            with psycopg.connect(self._url, autocommit=True) as connection:
                for ahead in aheads:
                    connection.execute(
                        sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(LOAD_SCHEMA, ahead.name))
                    )
        except psycopg.Error:
            pass  # the connector's next complete session drops them

    # ------------------------------------------------------------------ tables

    def _table(self, connector: str, name: str) -> _Table:
        table = _read_table(self.connection, connector, name)
        if table is None:
            self.connection.execute(
                "INSERT INTO prepsync.tables (connector, name) VALUES (%s, %s)", (connector, name)
            )
            table = _Table(connector, name, None, None, 0)
        return table

    def _save(self, table: _Table) -> None:
        self.connection.execute(
            "UPDATE prepsync.tables SET header = %s, key_columns = %s, row_count = %s, "
            "links = %s WHERE connector = %s AND name = %s",
            (
                None if table.header is None else json.dumps(table.header),
                None if table.key_columns is None else json.dumps(table.key_columns),
                table.row_count,
                json.dumps(table.links),
                table.connector,
                table.name,
            ),
        )

    def _create(self, table: _Table, header: list[str], key_columns: list[str]) -> None:
        """(Re)create the connector table with ``header`` (its rows are gone)."""
        connection = self.connection
        connection.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_ident(table.connector))
        )
        connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table.relation))
        connection.execute(_create_statement(table.relation, header, key_columns))
        table.header, table.key_columns, table.row_count = list(header), list(key_columns), 0

    def _count_stored(self, table: _Table, counter: ChangeCounter) -> None:
        """What ``table`` held; the links its record lacks are counted in SQL."""

        def scan(associations: Sequence[Association]) -> dict[str, int]:
            assert table.header is not None, "a table holding rows has a header"
            folded = {column.casefold(): column for column in table.header}
            counted: list[sql.Composable] = []
            for association in associations:
                first = folded.get(association.column1.casefold())
                second = folded.get(association.column2.casefold())
                if first is None or second is None:  # the mappings changed: none stored
                    counted.append(sql.SQL("0"))
                else:
                    counted.append(
                        sql.SQL("count(*) FILTER (WHERE {} IS NOT NULL AND {} IS NOT NULL)").format(
                            _ident(first), _ident(second)
                        )
                    )
            row = self.connection.execute(
                sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(counted), table.relation)
            ).fetchone()
            assert row is not None
            return {a.identifier: int(count) for a, count in zip(associations, row, strict=True)}

        counter.stored(table.row_count, table.links, scan)

    # ------------------------------------------------------------------ the interface

    def apply_table(
        self, session: Session, spec: TableSpec, path: Path, count_changes: ChangeCounter
    ) -> None:
        table = self._table(session.connector, spec.name)
        self._count_stored(table, count_changes)
        ahead = self._ahead.pop(spec.name.casefold(), None)
        if ahead is not None:
            try:
                self._take_ahead(table, ahead, count_changes)
            except REFUSED_BY_POSTGRESQL as error:
                raise _refused(path.name, error) from None
            table.row_count = count_changes.rows_after
            count_changes.record_links(table.links)
            self._save(table)
            return
        upload, header, positions = open_table_file(
            path, spec, session.separator, session.mode, table.header
        )
        try:
            if session.mode in FULL_MODES:
                self._load_complete(session, table, upload, positions, path, count_changes)
            else:
                self._apply_delta(session, table, upload, header, positions, path, count_changes)
        except REFUSED_BY_POSTGRESQL as error:
            raise _refused(path.name, error) from None
        table.row_count = count_changes.rows_after
        count_changes.record_links(table.links)
        self._save(table)

    def count_stored(self, connector: str, spec: TableSpec, count_changes: ChangeCounter) -> None:
        table = _read_table(self.connection, connector, spec.name)
        if table is not None:
            self._count_stored(table, count_changes)

    def commit_applied(self, session: Session, summary: dict[str, Any]) -> None:
        """The applied mark and the final state, in the session's transaction."""
        now = time.time()
        self.connection.execute(
            "INSERT INTO prepsync.applied (session_id, seq, applied_at) VALUES (%s, %s, %s)",
            (session.id, session.seq, now),
        )
        cursor = self.connection.execute(
            "UPDATE prepsync.sessions SET state = %s, reason = NULL, summary = %s, "
            "updated_at = %s WHERE id = %s AND state = %s",
            (DONE, json.dumps(summary), now, session.id, PROCESSING),
        )
        if cursor.rowcount != 1:
            # Not ours any more (our lock was lost with our sessions connection, and another
            # worker queued it again): roll back, it will be applied once, by that worker.
            raise psycopg.OperationalError(f"session {session.id} is no longer processing here")

    # ------------------------------------------------------------------ complete loads

    def _load_complete(
        self,
        session: Session,
        table: _Table,
        upload: Upload,
        positions: list[int],
        path: Path,
        counter: ChangeCounter,
    ) -> None:
        header = upload.header
        key_columns = [header[position] for position in positions]
        connection = self.connection
        stored_header = table.header
        if stored_header == header and table.row_count:
            # The usual next-day load: the native merge-join with the stored rows, which
            # checks the file as it reads it (the same checks and messages as SQLite's).
            self._diff_and_apply(table, upload, positions, counter)
            return
        link_positions = counter.link_pairs(header)
        if stored_header is None or table.row_count == 0:
            # The native reader checks what SQLite's load checks, with the same messages
            # (width, null key, strictly ascending keys, a CR outside quotes) as it encodes the
            # rows for COPY, and counts the links the rows hold.
            reader = upload.native
            assert reader is not None
            reader.configure(positions, True, link_positions)
            try:
                created = stored_header != header or table.key_columns != key_columns
                if created:
                    self._create(table, header, key_columns)
                inserted = _copy_rows(connection, table.relation, header, reader, freeze=created)
            finally:
                reader.close()
            counter.add(inserted, links=[(links, 0) for links in reader.link_rows])
            return
        # The checks as above, without storing anything, before COPY takes the file's bytes.
        _check_rows(upload, positions)
        staging = _positional("c", len(header))
        self._staging("prepsync_staging", staging)
        _copy_file(connection, _ident("prepsync_staging"), staging, path, session.separator)
        same_columns = sorted(c.casefold() for c in stored_header) == sorted(
            c.casefold() for c in header
        )
        if not same_columns:
            # The mappings changed the kept columns: every stored row goes, every new one comes.
            row = connection.execute("SELECT count(*) FROM prepsync_staging").fetchone()
            assert row is not None
            counter.every_stored_row_deleted()
            links = self._links_in(_ident("prepsync_staging"), staging, link_positions)
            counter.add(int(row[0]), links=links)
            self._rewrite(table, header, key_columns, staging)
            return
        diff = _FullDiff(table, header, stored_header, positions)
        _drop_temporary(connection, "prepsync_changes")
        with _merge_join(connection):
            connection.execute(
                sql.SQL("CREATE TEMP TABLE prepsync_changes ON COMMIT DROP AS SELECT {} {}").format(
                    diff.select_for_counting(link_positions), diff.source()
                )
            )
        aggregates: list[sql.Composable] = [
            sql.SQL("count(*) FILTER (WHERE command = 'i')"),
            sql.SQL("count(*) FILTER (WHERE command = 'u')"),
            sql.SQL("count(*) FILTER (WHERE command = 'd')"),
        ]
        for index in range(len(link_positions)):
            aggregates.extend(_link_aggregates(index))
        row = connection.execute(
            sql.SQL("SELECT {} FROM prepsync_changes").format(sql.SQL(", ").join(aggregates))
        ).fetchone()
        assert row is not None
        links = [
            (int(row[3 + 2 * index]), int(row[4 + 2 * index]))
            for index in range(len(link_positions))
        ]
        counter.add(int(row[0]), int(row[1]), int(row[2]), links)
        # Here the columns are the same in another order or spelling (the same layout into a
        # loaded table took the native merge-join above): the table is rebuilt in the new one.
        self._rewrite(table, header, key_columns, staging)

    def _diff_and_apply(
        self, table: _Table, upload: Upload, positions: list[int], counter: ChangeCounter
    ) -> None:
        """A complete load into a loaded table of the same layout, as SQLite does it: the
        native merge-join of the file with the stored rows read back in key order
        (:func:`_stored_changes`) yields only the changes, counted as SQLite's are
        (:meth:`~prepsync.server.thresholds.ChangeCounter.counted`); they wait in a spool (the
        COPY out holds the connection until the diff ends), then one ``COPY`` puts them in a
        changes table and three statements delete, update and insert."""
        header = upload.header
        counter.link_pairs(header)
        association_only = all(index in positions for index in range(len(header)))
        changed = False
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
            pending: list[str] = []
            changes = _stored_changes(
                self.connection, table, header, positions, upload, None, association_only
            )
            for command, _key, line, _values, stored_line in counter.counted(changes):
                # The new row, or for a delete the stored one (its key is all that is used).
                if command is INSERT:
                    pending.append("i," + str(line))
                elif command is UPDATE:
                    pending.append("u," + str(line))
                else:
                    pending.append("d," + str(stored_line))
                if len(pending) >= BATCH_ROWS:
                    spool.write(("\n".join(pending) + "\n").encode("utf-8"))
                    pending.clear()
                    changed = True
            if pending:
                spool.write(("\n".join(pending) + "\n").encode("utf-8"))
                changed = True
            if changed:
                spool.seek(0)
                self._apply_changes(table, header, positions, spool)

    def _apply_changes(
        self, table: _Table, header: list[str], positions: list[int], spool: IO[bytes]
    ) -> None:
        """The spooled changes (``i|u|d,<canonical line>``: the new row, or the deleted one)
        into ``prepsync_changes``, then delete, update, insert."""
        connection = self.connection
        staged = _positional("c", len(header))
        self._staging("prepsync_changes", ["command", *staged])
        statement = sql.SQL(
            "COPY prepsync_changes ({}) FROM STDIN (FORMAT csv, FORCE_NULL ({}))"
        ).format(_columns(["command", *staged]), _columns(staged))
        with connection.cursor() as cursor, cursor.copy(statement) as copy:
            while block := spool.read(COPY_BLOCK):
                copy.write(block)
        # No ANALYZE: unanalysed, the changes table looks small and each change is found
        # through the key's index; analysed, the planner hashed it and scanned the whole stored
        # table (500K entries, 5K updates: the UPDATE took 1.17 s against 0.26 s).
        relation = table.relation
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{} = c.{}").format(_ident(header[p]), _ident(staged[p])) for p in positions
        )
        connection.execute(
            sql.SQL(
                "DELETE FROM {} t USING prepsync_changes c WHERE c.command = 'd' AND {}"
            ).format(relation, match)
        )
        non_key = [i for i in range(len(header)) if i not in positions]
        if non_key:
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = c.{}").format(_ident(header[i]), _ident(staged[i])) for i in non_key
            )
            connection.execute(
                sql.SQL(
                    "UPDATE {} t SET {} FROM prepsync_changes c WHERE c.command = 'u' AND {}"
                ).format(relation, assignments, match)
            )
        connection.execute(
            sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM prepsync_changes WHERE command = 'i' "
                "ORDER BY {}"
            ).format(
                relation,
                _columns(header),
                _columns(staged),
                _columns([staged[p] for p in positions]),
            )
        )

    def _staging(self, name: str, columns: Sequence[str], ordered: bool = False) -> None:
        definitions: list[sql.Composable] = [
            sql.SQL('{} text COLLATE "C"').format(_ident(column)) for column in columns
        ]
        if ordered:  # the file's order of records, for a delta
            definitions.append(sql.SQL("ord bigserial"))
        _drop_temporary(self.connection, name)
        self.connection.execute(
            sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
                _ident(name), sql.SQL(", ").join(definitions)
            )
        )

    def _links_in(
        self,
        relation: sql.Composable,
        columns: Sequence[str],
        link_positions: Sequence[tuple[int, int]],
    ) -> list[tuple[int, int]]:
        """Links held by the rows of ``relation`` (all inserted): per pair of columns, (links
        inserted, 0)."""
        if not link_positions:
            return []
        counted = [
            sql.SQL("count(*) FILTER (WHERE {} IS NOT NULL AND {} IS NOT NULL)").format(
                _ident(columns[first]), _ident(columns[second])
            )
            for first, second in link_positions
        ]
        row = self.connection.execute(
            sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(counted), relation)
        ).fetchone()
        assert row is not None
        return [(int(count), 0) for count in row]

    def _rewrite(
        self, table: _Table, header: list[str], key_columns: list[str], staging: list[str]
    ) -> None:
        """The table in the new layout, holding the staged rows."""
        self._create(table, header, key_columns)
        self.connection.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM prepsync_staging").format(
                table.relation, _columns(header), _columns(staging)
            )
        )

    # ------------------------------------------------------------------ deltas

    def _apply_delta(
        self,
        session: Session,
        table: _Table,
        upload: Upload,
        header: list[str],
        positions: list[int],
        path: Path,
        counter: ChangeCounter,
    ) -> None:
        if table.header is None:
            self._create(table, header, [header[position] for position in positions])
        try:
            with self.connection.transaction():  # a savepoint: the bulk path may give way
                if self._bulk_delta(
                    session, table, header, upload.header, positions, path, counter
                ):
                    return
                raise _RowByRow
        except (_RowByRow, DataError, psycopg.DataError, psycopg.IntegrityError):
            pass
        self._delta_rows(table, upload, header, positions, counter)

    def _bulk_delta(
        self,
        session: Session,
        table: _Table,
        header: list[str],
        upload_header: list[str],
        positions: list[int],
        path: Path,
        counter: ChangeCounter,
    ) -> bool:
        """COPY, one join, one aggregate, three statements; False (nothing written) when the
        aggregate finds a command the row-by-row path must judge."""
        connection = self.connection
        staging = _positional("c", len(upload_header) + 1)  # c0: the command
        self._staging("prepsync_delta", staging, ordered=True)
        # Encoded by the native reader (no key checks here: a bad line, like anything the
        # aggregate below finds wrong, sends the delta to the row-by-row path, whose reader
        # names it).
        reader = UploadReader(str(path), path.name, session.separator)
        try:
            reader.header()
            reader.configure([], False)
            _copy_rows(connection, _ident("prepsync_delta"), staging, reader)
        finally:
            reader.close()
        folded = [column.casefold() for column in upload_header]
        # Staging column of each stored column.
        of_stored = [_ident(f"c{folded.index(column.casefold()) + 1}") for column in header]
        key_columns = [header[position] for position in positions]
        staged_key = [of_stored[position] for position in positions]
        link_pairs = counter.link_pairs(header)
        selected: list[sql.Composable] = [
            sql.SQL("d.ord, lower(d.c0) AS command"),
            sql.SQL("t.{} IS NOT NULL AS present").format(_ident(key_columns[0])),
        ]
        selected.extend(
            sql.SQL("d.{} AS {}").format(column, _ident(f"n{index}"))
            for index, column in enumerate(of_stored)
        )
        for index, (first, second) in enumerate(link_pairs):
            selected.append(
                sql.SQL("d.{} AS {}, d.{} AS {}, t.{} AS {}, t.{} AS {}").format(
                    of_stored[first],
                    _ident(f"n{index}a"),
                    of_stored[second],
                    _ident(f"n{index}b"),
                    _ident(header[first]),
                    _ident(f"o{index}a"),
                    _ident(header[second]),
                    _ident(f"o{index}b"),
                )
            )
        join = sql.SQL(" AND ").join(
            sql.SQL("t.{} = d.{}").format(_ident(column), staged)
            for column, staged in zip(key_columns, staged_key, strict=True)
        )
        _drop_temporary(connection, "prepsync_joined")
        connection.execute(
            sql.SQL(
                "CREATE TEMP TABLE prepsync_joined ON COMMIT DROP AS "
                "SELECT {} FROM prepsync_delta d LEFT JOIN {} t ON {}"
            ).format(sql.SQL(", ").join(selected), table.relation, join)
        )
        new_key = [_ident(f"n{position}") for position in positions]
        null_key = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(column) for column in new_key)
        inserts = sql.SQL("(command = 'insert' OR (command = 'merge' AND NOT present))")
        updates = sql.SQL("(j.command = 'update' OR (j.command = 'merge' AND j.present))")
        aggregates: list[sql.Composable] = [
            sql.SQL(
                "count(*) FILTER (WHERE command IS NULL OR command NOT IN "
                "('insert', 'update', 'delete', 'merge') OR {} "
                "OR (command = 'insert' AND present) "
                "OR (command IN ('update', 'delete') AND NOT present))"
            ).format(null_key),
            sql.SQL("count(*) FILTER (WHERE {})").format(inserts),
            sql.SQL("count(*) FILTER (WHERE {})").format(updates),  # j: the aggregate's alias
            sql.SQL("count(*) FILTER (WHERE command = 'delete')"),
        ]
        for index in range(len(link_pairs)):
            aggregates.extend(_link_aggregates(index, _DELTA_HAS_NEW, _DELTA_HAS_OLD))
        row = connection.execute(
            sql.SQL("SELECT {} FROM prepsync_joined j").format(sql.SQL(", ").join(aggregates))
        ).fetchone()
        assert row is not None
        if row[0]:
            return False
        twice = connection.execute(
            sql.SQL("SELECT 1 FROM prepsync_joined GROUP BY {} HAVING count(*) > 1 LIMIT 1").format(
                sql.SQL(", ").join(new_key)
            )
        ).fetchone()
        if twice is not None:  # a key changed twice: each command must see the one before
            return False
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{} = j.{}").format(_ident(column), key)
            for column, key in zip(key_columns, new_key, strict=True)
        )
        connection.execute(
            sql.SQL(
                "DELETE FROM {} t USING prepsync_joined j WHERE j.command = 'delete' AND {}"
            ).format(table.relation, match)
        )
        non_key = [index for index in range(len(header)) if index not in positions]
        if non_key:
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = j.{}").format(_ident(header[index]), _ident(f"n{index}"))
                for index in non_key
            )
            connection.execute(
                sql.SQL("UPDATE {} t SET {} FROM prepsync_joined j WHERE {} AND {}").format(
                    table.relation, assignments, updates, match
                )
            )
        connection.execute(
            sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM prepsync_joined WHERE {} ORDER BY ord"
            ).format(
                table.relation,
                _columns(header),
                _columns(_positional("n", len(header))),
                inserts,
            )
        )
        # Counted once written: a statement PostgreSQL refuses sends the delta row by row.
        links = [
            (int(row[4 + 2 * index]), int(row[5 + 2 * index])) for index in range(len(link_pairs))
        ]
        counter.add(int(row[1]), int(row[2]), int(row[3]), links)
        return True

    def _delta_rows(
        self,
        table: _Table,
        upload: Upload,
        header: list[str],
        positions: list[int],
        counter: ChangeCounter,
    ) -> None:
        """The delta a command at a time, each seeing the ones before (SQLite's own path:
        :func:`~prepsync.server.diff.delta_changes`, its checks and messages)."""
        rows = _Rows(self.connection, table.relation, header, positions)
        counter.link_pairs(header)
        changes = delta_changes(upload, header, positions, rows.find)
        for command, key, _line, values, _stored_line in counter.counted(changes):
            if command is INSERT:
                assert values is not None
                rows.insert(values)
            elif command is UPDATE:
                assert values is not None
                rows.update(key, values)
            else:
                rows.delete(key)


@contextmanager
def _merge_join(connection: psycopg.Connection[Any]) -> Iterator[None]:
    """The diff's FULL JOIN as a merge join: the table's primary key gives its rows in key
    order, staging is sorted in memory. The planner prefers a hash join on the table, which
    took 2.8x as long (100K entries: 523 ms against 188 ms, EXPLAIN ANALYZE), the hashing of
    every stored row's key costing more than the sort of the staged ones."""
    connection.execute("SET LOCAL enable_hashjoin = off")
    # A table just loaded has no statistics yet: the planner would sort its rows too rather
    # than read them in key order from the primary key.
    connection.execute("SET LOCAL enable_seqscan = off")
    try:
        yield
    finally:
        if connection.info.transaction_status == TransactionStatus.INTRANS:
            connection.execute("SET LOCAL enable_hashjoin = on")
            connection.execute("SET LOCAL enable_seqscan = on")


def _stored_changes(
    connection: psycopg.Connection[Any],
    table: _Table,
    header: list[str],
    positions: list[int],
    upload: Upload,
    after: bytes | None,
    key_only: bool,
) -> Iterator[Change]:
    """The changes of a complete load (``upload``, columns ``header``) against the stored rows,
    in key order, from the native merge-join (:func:`~prepsync.server.diff.full_changes`, the
    SQLite store's own): the rows come from ``COPY (SELECT ... ORDER BY key) TO STDOUT (FORMAT
    binary)``, in the file's column order (the stored columns matched case-insensitively), and
    are read by C (:class:`~prepsync._upload.CopyRows`, through libpq without the GIL), so an
    unchanged row costs no Python at all. ``after``: only keys above it (the review's pages).

    The COPY holds the connection until the changes are all read; a consumer that stops early
    closes the generator, and psycopg then cancels the COPY (which aborts the transaction)."""
    assert table.header is not None and table.key_columns is not None
    stored_folded = [column.casefold() for column in table.header]
    stored = [table.header[stored_folded.index(column.casefold())] for column in header]
    key = [_ident(stored[position]) for position in positions]
    where: sql.Composable = sql.SQL("")
    if after is not None:
        where = sql.SQL(" WHERE {}").format(_above(key, decode_key(after)))
    statement = sql.SQL("COPY (SELECT {} FROM {}{} ORDER BY {}) TO STDOUT (FORMAT binary)").format(
        _columns(stored), table.relation, where, sql.SQL(", ").join(key)
    )
    # The primary key's index gives the rows in key order; a table just loaded has no
    # statistics, and the planner would rather scan and sort it.
    connection.execute("SET LOCAL enable_seqscan = off")
    try:
        with connection.cursor() as cursor, cursor.copy(statement) as copy:
            # The PGconn behind psycopg's connection (its compiled bindings expose it).
            pointer = getattr(connection.pgconn, "pgconn_ptr", None)
            if pointer is not None and native_copy_problem() is None:
                rows = CopyRows(upload.name, len(header), positions, pgconn_ptr=pointer)
            else:  # psycopg's pure-Python binding: its blocks, fed to the same C
                rows = CopyRows(upload.name, len(header), positions, read=copy.read)
            yield from full_changes(upload, positions, rows, after, key_only)
    finally:
        if connection.info.transaction_status == TransactionStatus.INTRANS:
            connection.execute("SET LOCAL enable_seqscan = on")


def _above(columns: Sequence[sql.Composable], values: Sequence[str]) -> sql.Composable:
    """The rows whose key (``columns``) is above ``values``, in the key's byte order."""
    return sql.SQL("ROW({}) > ROW({})").format(
        sql.SQL(", ").join(sql.SQL('{} COLLATE "C"').format(c) for c in columns),
        sql.SQL(", ").join(sql.Literal(value) for value in values),
    )


def _drop_temporary(connection: psycopg.Connection[Any], name: str) -> None:
    """Temporary tables go at commit; one session's next table drops the previous one's."""
    connection.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(_ident(name)))


def _check_rows(upload: Upload, positions: Sequence[int]) -> None:
    """Read a complete load's file through the native reader, storing nothing: the checks and
    messages of SQLite's load (fields per row, null key, strictly ascending keys, a CR outside
    quotes) before COPY takes the file's bytes as they are."""
    reader = upload.native
    assert reader is not None
    reader.configure(positions, True)
    try:
        while reader.check(CHECK_ROWS):
            pass
    finally:
        reader.close()


class _RowByRow(Exception):
    """The bulk delta found something only the row-by-row path may judge."""


# Whether a change has a new row, a stored row: a complete load's (its command 'i', 'u' or
# 'd'), a delta's (as sent, 'merge' included; ``present``: its key is stored).
_DIFF_HAS_NEW = sql.SQL("command <> 'd'")
_DIFF_HAS_OLD = sql.SQL("command <> 'i'")
_DELTA_HAS_NEW = sql.SQL("command <> 'delete'")
_DELTA_HAS_OLD = sql.SQL("present")


def _link_aggregates(
    index: int, has_new: sql.Composable = _DIFF_HAS_NEW, has_old: sql.Composable = _DIFF_HAS_OLD
) -> list[sql.Composable]:
    """Links inserted and deleted by the changes (columns ``n<index>a/b``: the new row's pair,
    ``o<index>a/b``: the stored row's): a link is a pair of non-NULL values; an unchanged pair
    is no change."""
    new_link = sql.SQL("({} AND {} IS NOT NULL AND {} IS NOT NULL)").format(
        has_new, _ident(f"n{index}a"), _ident(f"n{index}b")
    )
    old_link = sql.SQL("({} AND {} IS NOT NULL AND {} IS NOT NULL)").format(
        has_old, _ident(f"o{index}a"), _ident(f"o{index}b")
    )
    same = sql.SQL("({} AND {} AND {} = {} AND {} = {})").format(
        new_link,
        old_link,
        _ident(f"n{index}a"),
        _ident(f"o{index}a"),
        _ident(f"n{index}b"),
        _ident(f"o{index}b"),
    )
    return [
        sql.SQL("count(*) FILTER (WHERE {} AND NOT {})").format(new_link, same),
        sql.SQL("count(*) FILTER (WHERE {} AND NOT {})").format(old_link, same),
    ]


class _Rows:
    """One row at a time, by key (the row-by-row delta and the review's lookups)."""

    def __init__(
        self,
        connection: psycopg.Connection[Any],
        relation: sql.Identifier,
        header: Sequence[str],
        positions: Sequence[int],
    ) -> None:
        self.connection = connection
        self.header = list(header)
        self.positions = list(positions)
        where = sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(_ident(header[position])) for position in positions
        )
        self._find = sql.SQL("SELECT {} FROM {} WHERE {}").format(_columns(header), relation, where)
        self._delete = sql.SQL("DELETE FROM {} WHERE {}").format(relation, where)
        non_key = [column for index, column in enumerate(header) if index not in positions]
        self._non_key = [index for index in range(len(header)) if index not in positions]
        self._update = (
            sql.SQL("UPDATE {} SET {} WHERE {}").format(
                relation,
                sql.SQL(", ").join(sql.SQL("{} = %s").format(_ident(c)) for c in non_key),
                where,
            )
            if non_key
            else None
        )
        self._insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            relation, _columns(header), sql.SQL(", ").join(sql.Placeholder() * len(header))
        )

    def find(self, key: bytes) -> str | None:
        row = self.connection.execute(self._find, decode_key(key)).fetchone()
        return None if row is None else format_record(_empty_null(row))

    def insert(self, values: Sequence[str]) -> None:
        self.connection.execute(self._insert, _null_empty(values))

    def update(self, key: bytes, values: Sequence[str]) -> None:
        if self._update is not None:
            new = _null_empty([values[index] for index in self._non_key])
            self.connection.execute(self._update, [*new, *decode_key(key)])

    def delete(self, key: bytes) -> None:
        self.connection.execute(self._delete, decode_key(key))


class _FullDiff:
    """The FULL JOIN of a staged complete load (columns ``c<i>`` in the file's order) with the
    stored table (the same columns, spelled or ordered otherwise): the rows that differ, for the
    threshold counts of a load that then rebuilds the table in the file's layout."""

    def __init__(
        self, table: _Table, header: list[str], stored_header: list[str], positions: list[int]
    ) -> None:
        self.table = table
        self.header = header
        stored_folded = [column.casefold() for column in stored_header]
        # The stored column of each file column.
        self.stored = [stored_header[stored_folded.index(c.casefold())] for c in header]
        self.positions = positions

    def _key_pairs(self) -> list[tuple[sql.Identifier, sql.Identifier]]:
        return [(_ident(f"c{p}"), _ident(self.stored[p])) for p in self.positions]

    def source(self) -> sql.Composed:
        """FROM ... WHERE ...: the changed rows."""
        pairs = self._key_pairs()
        join = sql.SQL(" AND ").join(
            sql.SQL("s.{} = t.{}").format(staged, stored) for staged, stored in pairs
        )
        first_staged, first_stored = pairs[0]
        unmatched = sql.SQL("t.{} IS NULL OR s.{} IS NULL").format(first_stored, first_staged)
        non_key = [i for i in range(len(self.header)) if i not in self.positions]
        if not non_key:  # every column is a key column: rows that join are equal
            return sql.SQL("FROM prepsync_staging s FULL JOIN {} t ON {} WHERE {}").format(
                self.table.relation, join, unmatched
            )
        new_row = sql.SQL(", ").join(sql.SQL("s.{}").format(_ident(f"c{i}")) for i in non_key)
        old_row = sql.SQL(", ").join(
            sql.SQL("t.{}").format(_ident(self.stored[i])) for i in non_key
        )
        return sql.SQL(
            "FROM prepsync_staging s FULL JOIN {} t ON {} "
            "WHERE {} OR ROW({}) IS DISTINCT FROM ROW({})"
        ).format(self.table.relation, join, unmatched, new_row, old_row)

    def command(self) -> sql.Composed:
        first_staged, first_stored = self._key_pairs()[0]
        return sql.SQL(
            "CASE WHEN t.{} IS NULL THEN 'i' WHEN s.{} IS NULL THEN 'd' ELSE 'u' END"
        ).format(first_stored, first_staged)

    def select_for_counting(self, link_positions: Sequence[tuple[int, int]]) -> sql.Composed:
        """command, and each link pair's new (n<a>a/b) and old (o<a>a/b) values: what the
        threshold counts need (the table is then rebuilt from staging, not patched)."""
        selected: list[sql.Composable] = [sql.SQL("{} AS command").format(self.command())]
        for index, (first, second) in enumerate(link_positions):
            selected.append(
                sql.SQL("s.{} AS {}, s.{} AS {}, t.{} AS {}, t.{} AS {}").format(
                    _ident(f"c{first}"),
                    _ident(f"n{index}a"),
                    _ident(f"c{second}"),
                    _ident(f"n{index}b"),
                    _ident(self.stored[first]),
                    _ident(f"o{index}a"),
                    _ident(self.stored[second]),
                    _ident(f"o{index}b"),
                )
            )
        return sql.SQL(", ").join(selected)


# ------------------------------------------------------------------------------- the store


class PgResourceStore:
    """The worker's handle: one connection, one transaction per session."""

    store_errors: tuple[type[BaseException], ...] = (psycopg.OperationalError,)

    def __init__(self, url: str) -> None:
        self._url = url
        self.connection = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        connection = connect(self._url)
        # The staging tables are temporary: held in this backend's own buffers, 8 MB by
        # default, set before the first one is touched. Memory, not durability.
        connection.execute(f"SET temp_buffers = '{WORKER_TEMP_BUFFERS}'")
        return connection

    def _alive(self) -> psycopg.Connection[Any]:
        if self.connection.closed:  # the database restarted: connect again
            self.connection = self._connect()
        return self.connection

    @contextmanager
    def apply_transaction(self) -> Iterator[PgWork]:
        connection = self._alive()
        work = PgWork(connection, self._url)
        committed = False
        try:
            with connection.transaction():
                # The diff's hash join holds the stored table's rows in one batch at this size
                # (a few hundred thousand rows) instead of spilling them to temporary files.
                connection.execute(f"SET LOCAL work_mem = '{WORKER_WORK_MEM}'")
                yield work
            committed = True
        finally:
            work.finish(committed)

    def applied_summary(self, session_id: str) -> dict[str, Any] | None:
        """Never needed here: the mark, the state and the summary commit together, so a
        session is never applied with its outcome unrecorded."""
        return None

    def was_applied(self, session_id: str) -> bool:
        row = (
            self._alive()
            .execute("SELECT 1 FROM prepsync.applied WHERE session_id = %s", (session_id,))
            .fetchone()
        )
        return row is not None

    def interrupt(self) -> None:
        """Cancel the running statement (from another thread): the transaction rolls back."""
        if not self.connection.closed:
            self.connection.cancel()

    def after_session(self) -> None:
        """Nothing to do between sessions (PostgreSQL checkpoints on its own)."""

    def close(self) -> None:
        self.connection.close()


class PgBackend:
    """The PostgreSQL :class:`~prepsync.server.storeapi.Backend`."""

    name = "postgresql"
    several_processes = True

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        connection = connect(url)
        try:
            row = connection.execute("SHOW server_encoding").fetchone()
            if row is None or str(row[0]).upper() not in ("UTF8", "UTF-8"):
                raise ConfigError(
                    f"--database: the database's encoding is {row and row[0]}; the store "
                    "needs UTF8 (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
                )
            with connection.transaction():
                # Several processes starting at once: one creates the schema, the others wait.
                connection.execute(
                    sql.SQL("SELECT pg_advisory_xact_lock({}, 0)").format(sql.Literal(LOCK_SPACE))
                )
                connection.execute(_SCHEMA_DDL)
                self._check_data_dir(connection, data_dir)
        except psycopg.Error as error:
            raise ConfigError(f"--database: {_first_line(error)}") from None
        finally:
            connection.close()

    @staticmethod
    def _check_data_dir(connection: psycopg.Connection[Any], data_dir: Path) -> None:
        """Every process of one database shares one data directory: a session's files arrive at
        whichever process the agent's requests reach and are applied by whichever worker claims
        it, and the token key there signs tokens every process must accept. The directory's id
        (``database.id``) is recorded in the database by the first server; a process whose data
        directory holds another id, or none, is refused at start."""
        path = data_dir / DATA_ID_FILE
        local = path.read_text(encoding="ascii").strip() if path.exists() else None
        row = connection.execute("SELECT data_id FROM prepsync.instance").fetchone()
        if row is None:
            if local is None:
                local = str(uuid.uuid4())
                temporary = path.with_suffix(".tmp")
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(descriptor, (local + "\n").encode("ascii"))
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                os.replace(temporary, path)
            connection.execute(
                "INSERT INTO prepsync.instance (data_id, recorded_at) VALUES (%s, %s)",
                (local, time.time()),
            )
            return
        if local != row[0]:
            found = "no data directory id" if local is None else f"data directory id {local}"
            raise ConfigError(
                f"--data-dir {data_dir} ({found}) is not the data directory of the servers "
                f"using this database (id {row[0]}, in their {DATA_ID_FILE}): every server "
                "process of one database must share one data directory, where the uploads are"
            )

    def check_tables(self, tables: Mapping[str, Sequence[TableSpec]]) -> None:
        """Connector and table names must be usable as PostgreSQL names as they are."""
        for connector, specs in tables.items():
            if connector in (SCHEMA, LOAD_SCHEMA) or connector.startswith("pg_"):
                raise ConfigError(
                    f"connector {connector!r}: PostgreSQL's store cannot use it as a schema name "
                    f"({SCHEMA!r} and {LOAD_SCHEMA!r} are the store's own, pg_ names are "
                    "PostgreSQL's)"
                )
            for name in (connector, *(spec.name for spec in specs)):
                if len(name.encode("utf-8")) > MAX_IDENTIFIER or "\x00" in name:
                    raise ConfigError(
                        f"{name!r}: longer than PostgreSQL's {MAX_IDENTIFIER}-byte names"
                    )

    def lock_sessions(self, session_ids: Sequence[str], exclusive: bool) -> Callable[[], None]:
        """Wait for the sessions' locks across every process of the database; returns their
        release. Uploads hold a session's lock shared (several chunks at once), a commit's
        check, hash and queueing and a cancel hold it exclusive: no byte lands in a file after
        a commit in another process hashed it, and two commits of one session never both
        verify. An opening holds exclusive the sessions it supersedes, while it cancels them and
        discards their files.

        Session-level advisory locks on a connection of their own, so a process that dies frees
        them with its connection. Taken in the order of their keys, each key once: two openings
        never wait for each other in a cycle, and a hash collision of two session ids only
        serializes them. Blocking: call it from a thread, not the event loop."""
        function = "pg_advisory_lock" if exclusive else "pg_advisory_lock_shared"
        try:
            connection = connect(self.url)
        except ConfigError as error:
            raise ApiError(503, f"the database does not answer: {error}") from None
        try:
            keys = [
                row[0]
                for row in connection.execute(
                    "SELECT DISTINCT hashtext(id) AS key FROM unnest(%s::text[]) AS id "
                    "ORDER BY key",
                    (list(session_ids),),
                )
            ]
            statement = sql.SQL("SELECT {}({}, %s)").format(
                sql.SQL(function), sql.Literal(SESSION_LOCK_SPACE)
            )
            for key in keys:
                connection.execute(statement, (key,))
        except psycopg.Error as error:
            connection.close()
            raise ApiError(503, f"cannot lock the session: {_first_line(error)}") from None
        return connection.close  # the locks go with the connection

    def session_database(self) -> PgSessionDatabase:
        return PgSessionDatabase(self.url)

    def resource_store(self) -> PgResourceStore:
        return PgResourceStore(self.url)

    @contextmanager
    def review(
        self, session: Session, spec: TableSpec, path: Path, after: bytes | None
    ) -> Iterator[TableDiff]:
        """The changes of ``path`` against the table as stored, in a transaction that is rolled
        back (its staging table goes with it)."""
        connection = connect(self.url)
        diff: TableDiff | None = None
        try:
            connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            try:
                diff = _review(connection, session, spec, path, after)
                yield diff
            except REFUSED_BY_POSTGRESQL as error:
                raise _refused(path.name, error) from None
            finally:
                # A complete load's changes hold a COPY open until they are all read: a
                # reader that stopped early ends it (closing the generator) before the
                # rollback.
                close = getattr(diff.changes, "close", None) if diff is not None else None
                if close is not None:
                    close()
                if not connection.closed:
                    connection.execute("ROLLBACK")
        finally:
            connection.close()

    def resources_csv(
        self, connector: str, name: str, default_header: Sequence[str]
    ) -> Iterator[bytes]:
        """Header, then the rows in key order: ``COPY ... TO STDOUT (FORMAT csv)`` writes them
        as the SQLite store does (quoted only when needed, NULL as an empty field), except a
        one-column row ``\\.``, which it quotes: one-column tables are written here instead."""
        connection = connect(self.url)
        try:
            connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            table = _read_table(connection, connector, name)
            header = default_header if table is None or table.header is None else table.header
            yield (format_record(header) + "\n").encode("utf-8")
            if table is None or table.header is None or table.key_columns is None:
                return
            select = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                _columns(table.header), table.relation, _columns(table.key_columns)
            )
            if len(table.header) > 1:
                with connection.cursor() as cursor:
                    copy_out = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(select)
                    with cursor.copy(copy_out) as copy:
                        pieces: list[bytes] = []
                        size = 0
                        for block in copy:
                            pieces.append(bytes(block))
                            size += len(block)
                            if size >= STREAM_PIECE:
                                yield b"".join(pieces)
                                pieces.clear()
                                size = 0
                        if pieces:
                            yield b"".join(pieces)
            else:
                with connection.cursor(name="prepsync_resources") as cursor:
                    cursor.execute(select)
                    while rows := cursor.fetchmany(REVIEW_FETCH):
                        text = "".join(format_record(_empty_null(row)) + "\n" for row in rows)
                        yield text.encode("utf-8")
            connection.execute("COMMIT")
        finally:
            connection.close()

    def table_counts(self) -> dict[tuple[str, str], int]:
        connection = connect(self.url)
        try:
            return {
                (str(connector), str(name)): int(count)
                for connector, name, count in connection.execute(
                    "SELECT connector, name, row_count FROM prepsync.tables"
                )
            }
        finally:
            connection.close()


def _review(
    connection: psycopg.Connection[Any],
    session: Session,
    spec: TableSpec,
    path: Path,
    after: bytes | None,
) -> TableDiff:
    table = _read_table(connection, session.connector, spec.name)
    stored_header = None if table is None else table.header
    upload, header, positions = open_table_file(
        path, spec, session.separator, session.mode, stored_header
    )
    if session.mode not in FULL_MODES:
        if table is None or table.header is None:

            def nothing_stored(_key: bytes) -> str | None:
                return None

            find: Callable[[bytes], str | None] = nothing_stored
        else:
            find = _Rows(connection, table.relation, header, positions).find
        return TableDiff(header, delta_changes(upload, header, positions, find, after))
    if table is None or table.header is None or table.row_count == 0:
        return TableDiff(header, full_changes(upload, positions, (), after))
    stored_header = table.header
    if sorted(c.casefold() for c in stored_header) != sorted(c.casefold() for c in header):
        # The mappings changed the kept columns: every stored row goes, every new one comes.
        return TableDiff(header, _replaced(connection, table, upload, positions, after))
    # The same columns (maybe ordered or spelled otherwise): the native merge-join, as when
    # applying; the stored rows are read back in the file's column order.
    return TableDiff(
        header,
        _stored_changes(connection, table, header, positions, upload, after, spec.key is None),
    )


def _replaced(
    connection: psycopg.Connection[Any],
    table: _Table,
    upload: Upload,
    positions: list[int],
    after: bytes | None,
) -> Iterator[Change]:
    """A complete load in other columns than the stored ones: the file's rows inserted, then
    every stored row deleted (the SQLite store's order)."""
    yield from full_changes(upload, positions, (), after)
    assert table.header is not None and table.key_columns is not None
    stored_key = [_ident(column) for column in table.key_columns]
    where: sql.Composable = sql.SQL("true")
    if after is not None:
        where = _above(stored_key, decode_key(after))
    statement = sql.SQL("SELECT {}, {} FROM {} WHERE {} ORDER BY {}").format(
        sql.SQL(", ").join(stored_key),
        _columns(table.header),
        table.relation,
        where,
        sql.SQL(", ").join(sql.SQL('{} COLLATE "C"').format(c) for c in stored_key),
    )
    width = len(stored_key)
    with connection.cursor(name="prepsync_review") as cursor:
        cursor.execute(statement)
        while rows := cursor.fetchmany(REVIEW_FETCH):
            for row in rows:
                key = encode_key(list(row[:width]))
                yield DELETE, key, None, None, format_record(_empty_null(row[width:]))
