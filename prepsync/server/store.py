"""The resource store: every connector table's rows, in REFERENCE §2 key order, in one SQLite file.

Layout (``<data>/store.sqlite3``, WAL mode):

* ``tables``: one row per (connector, ConnectionTable): the header the rows are stored in (kept
  columns as spelled and ordered by the file that last loaded them), the row count and, for an
  entity table with association mappings, the links stored per association (JSON), kept up to
  date in the same transaction as the rows (percentage thresholds need them without a scan).
* ``rows``: ``(tid, key, line, seq)`` WITHOUT ROWID, primary key ``(tid, key)``. ``key`` is
  :func:`encode_key` of the key values, a BLOB, so SQLite's ``ORDER BY key`` (memcmp) is the
  REFERENCE §2 order and a streaming read in key order is a sequential B-tree walk. ``line`` is
  the row as a canonical CSV record (REFERENCE §2 output quoting, no line end) in header order: the
  resources endpoint writes it as it is, and two rows have equal values iff their lines are equal.
  ``seq`` is the opening sequence of the session that last wrote the row (a complete load deletes
  the rows it did not write).
* Writes go through one bulk path, :meth:`Transaction.write_changes`: a batch of inserts,
  updates and deletes of one table, keys in order, each kind one ``executemany``. A PostgreSQL
  store would take the same batches through ``COPY`` into a staging table and three set-based
  statements. A load into an empty table has its own path, :meth:`Transaction.load_rows`
  (every row an insert, straight from the native reader, in C where it can be): ``COPY`` itself.
* ``applied``: the sessions whose changes are in the store. It is written in the same
  transaction as the rows, so after a crash the worker can tell "applied, state not yet
  recorded" from "not applied" and never applies a session twice.

Invariant: only the worker thread writes (one connection, one transaction per session);
readers open their own read-only connections and see a consistent snapshot (WAL).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prepsync._upload import NativeWriter, UploadReader, capture_writer, key_line
from prepsync.private import prepare_sqlite
from prepsync.protocol import csv_record

if TYPE_CHECKING:
    from prepsync.server.apply import SqliteWork

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tables (
    tid INTEGER PRIMARY KEY,
    connector TEXT NOT NULL,
    name TEXT NOT NULL,
    header TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    links TEXT,
    UNIQUE (connector, name)
);
CREATE TABLE IF NOT EXISTS rows (
    tid INTEGER NOT NULL,
    key BLOB NOT NULL,
    line TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tid, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied (
    session_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    applied_at REAL NOT NULL,
    summary TEXT
);
"""

WAL_SIZE_LIMIT = 64 * 1024 * 1024
# Page cache of the writer: a big transaction whose dirty pages outgrow the cache spills them
# to the WAL, and pages changed again after a spill are written again.
CACHE_KIB = 64 * 1024
# Rows per INSERT statement of the bulk path (2 parameters each; SQLite allows 32766).
INSERT_ROWS = 64
# Stored rows per fetchmany of a table's key-ordered scan.
STORED_BATCH = 4096
# Bytes of CSV text gathered before the resources stream yields a piece.
STREAM_PIECE = 256 * 1024


def encode_key(values: Iterable[str]) -> bytes:
    """Key values -> bytes whose memcmp order is REFERENCE §2 order.

    Each value's UTF-8 bytes with 0x00 escaped as 0x00 0x01, then 0x00 0x00. A value that is a
    prefix of another ends in 0x00 0x00 where the other goes on with a byte > 0x00 or with
    0x00 0x01: the shorter one sorts first, and only then does the next column decide.
    """
    return b"".join(
        value.encode("utf-8").replace(b"\x00", b"\x00\x01") + b"\x00\x00" for value in values
    )


def decode_key(key: bytes) -> list[str]:
    """Inverse of :func:`encode_key`."""
    values: list[str] = []
    current = bytearray()
    position = 0
    while position < len(key):
        byte = key[position]
        if byte == 0:
            if key[position + 1] == 0:
                values.append(current.decode("utf-8"))
                current.clear()
            else:
                current.append(0)
            position += 2
        else:
            current.append(byte)
            position += 1
    return values


# Stored rows are always ","-separated, whatever separator a session's files use.
STORE_SEPARATOR = ","


def format_record(values: Sequence[str]) -> str:
    """One stored (or served) CSV record: :func:`prepsync.protocol.csv_record` with ``,``."""
    return csv_record(values, STORE_SEPARATOR)


@dataclass
class TableState:
    """A table as stored: ``header`` is None until a session first loads it."""

    tid: int
    header: tuple[str, ...] | None
    row_count: int
    # Association identifier -> links stored, for the associations on an entity table; an
    # association missing here is counted by a scan once (a store from before link counting).
    links: dict[str, int] = field(default_factory=dict)


def _configure(connection: sqlite3.Connection) -> None:
    # A crash loses nothing committed: the agent advances its baselines once the server says
    # "done", so a committed transaction must survive power loss too.
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=30000")
    # Large temporary B-trees (sorting, big transactions) go to files, not memory.
    connection.execute("PRAGMA temp_store=FILE")
    # A big load grows the WAL to the transaction's size; give the space back after checkpoints.
    connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    # No checkpoint inside COMMIT: copying a big load from the WAL into the database (and its
    # fsync) would delay the session's verdict by as much again as the commit itself. The
    # worker checkpoints between sessions (Store.checkpoint), once the verdict is recorded;
    # a committed transaction is durable in the WAL either way (synchronous=FULL).
    connection.execute("PRAGMA wal_autocheckpoint=0")


def open_store(path: Path) -> Store:
    # With its native handle where SQLite can be reached from C: an initial load's rows then go
    # in without a Python object per row (Transaction.load_rows).
    prepare_sqlite(path)  # 0600 before SQLite creates it 0644 (and its -wal, -shm alike)
    connection, native = capture_writer(
        lambda: sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    )
    # Before the first table exists; 16 KiB pages suit WITHOUT ROWID rows of a few hundred bytes.
    connection.execute("PRAGMA page_size=16384")
    connection.execute("PRAGMA journal_mode=WAL")
    _configure(connection)
    connection.executescript(_SCHEMA)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(tables)")}
    if "links" not in columns:  # a store from before link counting
        connection.execute("ALTER TABLE tables ADD COLUMN links TEXT")
    applied_columns = {row[1] for row in connection.execute("PRAGMA table_info(applied)")}
    if "summary" not in applied_columns:  # a store from before summaries were kept with the mark
        connection.execute("ALTER TABLE applied ADD COLUMN summary TEXT")
    return Store(connection, path, native)


class Store:
    """The writer's handle (the worker's). Not thread-safe: one thread uses it at a time.

    The SQLite :class:`~prepsync.server.storeapi.ResourceStore`."""

    store_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)

    def __init__(
        self, connection: sqlite3.Connection, path: Path, native: NativeWriter | None = None
    ) -> None:
        self.connection = connection
        self.path = path
        self.native = native

    def close(self) -> None:
        self.native = None  # its handle goes with the connection
        self.connection.close()

    def interrupt(self) -> None:
        """Abort the running statement (from another thread): the transaction rolls back."""
        self.connection.interrupt()

    def checkpoint(self) -> None:
        """Copy committed transactions from the WAL into the database file, without waiting
        for readers (what SQLite's automatic checkpoint would do at the end of a commit); the
        WAL is then reused from its start and cut back to WAL_SIZE_LIMIT by the next write."""
        self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def after_session(self) -> None:
        """Between sessions, once the verdict is recorded (the agent waiting for it does not
        wait for this)."""
        self.checkpoint()

    @contextmanager
    def apply_transaction(self) -> Iterator[SqliteWork]:
        """One session's transaction, with the diff's row work (:mod:`prepsync.server.apply`,
        which builds on this module: imported here, when a session is applied)."""
        from prepsync.server.apply import SqliteWork

        with self.transaction() as transaction:
            yield SqliteWork(transaction)

    def was_applied(self, session_id: str) -> bool:
        row = self.connection.execute(
            "SELECT 1 FROM applied WHERE session_id = ?", (session_id,)
        ).fetchone()
        return row is not None

    def applied_summary(self, session_id: str) -> dict[str, Any] | None:
        """The summary recorded with a session's applied mark (None: not applied, or applied
        by a version that did not record it)."""
        row = self.connection.execute(
            "SELECT summary FROM applied WHERE session_id = ?", (session_id,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        summary: dict[str, Any] = json.loads(row[0])
        return summary

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction: committed if the block ends normally, else rolled back."""
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield Transaction(self.connection, self.path, self.native)
        except BaseException:
            # After an interrupt SQLite may already have rolled back; ROLLBACK then fails.
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")


class Transaction:
    """Row operations inside :meth:`Store.transaction`."""

    def __init__(
        self, connection: sqlite3.Connection, path: Path, native: NativeWriter | None = None
    ) -> None:
        self._connection = connection
        self.path = path
        self._native = native

    @property
    def connection(self) -> sqlite3.Connection:
        return self._connection

    def table(self, connector: str, name: str) -> TableState:
        """The stored state of a table, created empty (header None) if it is not there."""
        state = table_state(self._connection, connector, name)
        if state is None:
            cursor = self._connection.execute(
                "INSERT INTO tables (connector, name, header, row_count) VALUES (?, ?, 'null', 0)",
                (connector, name),
            )
            assert cursor.lastrowid is not None
            return TableState(cursor.lastrowid, None, 0)
        return state

    def save_table(self, state: TableState) -> None:
        self._connection.execute(
            "UPDATE tables SET header = ?, row_count = ?, links = ? WHERE tid = ?",
            (
                json.dumps(None if state.header is None else list(state.header)),
                state.row_count,
                json.dumps(state.links),
                state.tid,
            ),
        )

    def write_changes(
        self,
        tid: int,
        seq: int,
        inserts: Sequence[tuple[bytes, str]],
        updates: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
    ) -> None:
        """The bulk path: one table's batch of changes (keys absent, present, present)."""
        connection = self._connection
        if deletes:
            connection.executemany(
                "DELETE FROM rows WHERE tid = ? AND key = ?", [(tid, key) for key in deletes]
            )
        if updates:
            connection.executemany(
                "UPDATE rows SET line = ?, seq = ? WHERE tid = ? AND key = ?",
                [(line, seq, tid, key) for key, line in updates],
            )
        if inserts:
            # tid and seq are the same for the whole batch: written into the statement (integers,
            # so nothing to escape). Rows go INSERT_ROWS to a statement: one step of a
            # multi-row INSERT costs ~40 % less CPU per row than executemany's step per row
            # (bind, step, reset each), the bulk of an initial load.
            row = f"({int(tid)}, ?, ?, {int(seq)})"
            whole = len(inserts) - len(inserts) % INSERT_ROWS
            if whole:
                values = list(itertools.chain.from_iterable(inserts[:whole]))
                width = 2 * INSERT_ROWS
                connection.executemany(
                    "INSERT INTO rows (tid, key, line, seq) VALUES "
                    + ",".join([row] * INSERT_ROWS),
                    [values[start : start + width] for start in range(0, len(values), width)],
                )
            if whole < len(inserts):
                connection.executemany(
                    f"INSERT INTO rows (tid, key, line, seq) VALUES {row}", inserts[whole:]
                )

    def insert_groups(self, tid: int, seq: int, groups: Sequence[Sequence[bytes]]) -> None:
        """The bulk path of a load into an empty table: rows absent from the table, in key
        order, as :meth:`prepsync._upload.UploadReader.insert_groups` hands them (lists of
        ``2 * INSERT_ROWS`` values key, line, ..., the last one maybe shorter; lines as UTF-8
        bytes, stored as TEXT by ``CAST``: SQLite takes the bytes as they are)."""
        width = 2 * INSERT_ROWS
        full = [group for group in groups if len(group) == width]
        if full:
            self._connection.executemany(_insert_statement(tid, seq, INSERT_ROWS), full)
        for group in groups:
            if len(group) != width:
                self._connection.execute(_insert_statement(tid, seq, len(group) // 2), group)

    def load_rows(self, tid: int, seq: int, reader: UploadReader, key_only: bool = False) -> int:
        """Every remaining row of a complete load's native reader (open, configured with key
        order checked) into table ``tid``, which holds none of their keys; returns the count.

        The store's bulk path for a load into an empty table: in C through the writer's own
        handle when there is one (:class:`~prepsync._upload.NativeWriter`, ~1 µs a row less
        than Python's binding), else the reader's parameter lists through
        :meth:`insert_groups`. ``key_only``: store the rows' lines empty (see :func:`line_of`)."""
        if self._native is not None:
            return self._native.bulk_load(reader, tid, seq, key_only)
        rows = 0
        while groups := reader.insert_groups(INSERT_ROWS, 64):
            if key_only:
                for group in groups:
                    group[1::2] = [b""] * (len(group) // 2)
            self.insert_groups(tid, seq, groups)
            rows += sum(len(group) for group in groups) // 2
        return rows

    def delete_rows(self, tid: int) -> None:
        self._connection.execute("DELETE FROM rows WHERE tid = ?", (tid,))

    def mark_applied(self, session_id: str, seq: int, summary: dict[str, Any]) -> None:
        # The summary goes with the mark: a crash before the sessions database records the
        # outcome leaves it here, and recovery shows the same counts a clean run would have.
        self._connection.execute(
            "INSERT INTO applied (session_id, seq, applied_at, summary) VALUES (?, ?, ?, ?)",
            (session_id, seq, time.time(), json.dumps(summary)),
        )


def _insert_statement(tid: int, seq: int, rows: int) -> str:
    # tid and seq are the same for the whole batch: written into the statement (integers, so
    # nothing to escape); the line is bound as bytes, CAST keeps it TEXT.
    row = f"({int(tid)}, ?, CAST(? AS TEXT), {int(seq)})"
    return "INSERT INTO rows (tid, key, line, seq) VALUES " + ",".join([row] * rows)


def table_state(connection: sqlite3.Connection, connector: str, name: str) -> TableState | None:
    row = connection.execute(
        "SELECT tid, header, row_count, links FROM tables WHERE connector = ? AND name = ?",
        (connector, name),
    ).fetchone()
    if row is None:
        return None
    header = json.loads(row[1])
    links = {} if row[3] is None else json.loads(row[3])
    return TableState(row[0], None if header is None else tuple(header), row[2], links)


def line_of(key: bytes, line: str) -> str:
    """A stored row's line: as stored, or rebuilt from the key for a key-only row.

    An association-only table's columns are all key columns, in header order, so its line
    would only repeat the key: its rows are stored with an empty line (half the bytes of a
    link table, written twice by the WAL and its checkpoint). A real line is never empty (a
    key value never is), and rows of a store from before keep their lines."""
    return line if line else key_line(key)


def lookup(connection: sqlite3.Connection, tid: int, key: bytes) -> str | None:
    """The stored line of the row with ``key``, or None."""
    row = connection.execute(
        "SELECT line FROM rows WHERE tid = ? AND key = ?", (tid, key)
    ).fetchone()
    return None if row is None else line_of(key, str(row[0]))


def stored_rows(
    connection: sqlite3.Connection, tid: int, after: bytes | None = None
) -> Iterator[tuple[bytes, str]]:
    """(key, line) of the table's rows in key order, from just after ``after`` when given."""
    if after is None:
        cursor = connection.execute("SELECT key, line FROM rows WHERE tid = ? ORDER BY key", (tid,))
    else:
        cursor = connection.execute(
            "SELECT key, line FROM rows WHERE tid = ? AND key > ? ORDER BY key", (tid, after)
        )
    while rows := cursor.fetchmany(4096):
        for key, line in rows:
            yield key, line_of(key, line)


def stored_batches(
    connection: sqlite3.Connection, tid: int, after: bytes | None = None
) -> Iterator[list[tuple[bytes, bytes]]]:
    """(key, line as UTF-8 bytes) of the table's rows in key order, in the lists ``fetchmany``
    returns (for the native merge-join). Bytes, not str: a scan of every row then skips
    decoding each line (~40 % of the fetch), and the merge compares bytes anyway. A key-only
    row's line is empty here (the merge rebuilds it, see :func:`line_of`)."""
    select = "SELECT key, CAST(line AS BLOB) FROM rows WHERE tid = ?"
    if after is None:
        cursor = connection.execute(f"{select} ORDER BY key", (tid,))
    else:
        cursor = connection.execute(f"{select} AND key > ? ORDER BY key", (tid, after))
    while rows := cursor.fetchmany(STORED_BATCH):
        yield rows


@contextmanager
def snapshot(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction: the store as last committed.

    The worker reads a table's stored rows through one while it writes the same table through
    its own connection (WAL: the snapshot does not see the uncommitted writes).
    """
    connection = _open_reader(path)
    try:
        connection.execute("BEGIN")
        yield connection
    finally:
        connection.close()


def _open_reader(path: Path) -> sqlite3.Connection:
    # Read-only: a reader can never write, whatever the code does; check_same_thread off because
    # a streaming response calls next() from whichever thread-pool thread is free (one at a time).
    connection = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


def iter_table_csv(
    path: Path, connector: str, name: str, default_header: Sequence[str]
) -> Iterator[bytes]:
    """The table's stored rows as CSV bytes (header first, rows in key order), in pieces.

    Reads in one transaction, so header and rows come from the same snapshot even while the
    worker commits a new load; memory is one piece whatever the table's size. A table that was
    never loaded is ``default_header`` alone.
    """
    connection = _open_reader(path)
    try:
        connection.execute("BEGIN")
        row = connection.execute(
            "SELECT tid, header FROM tables WHERE connector = ? AND name = ?", (connector, name)
        ).fetchone()
        header = None if row is None else json.loads(row[1])
        if header is None:
            header = list(default_header)
        pieces = [format_record(header), "\n"]
        size = 0
        if row is not None:
            cursor = connection.execute(
                "SELECT key, line FROM rows WHERE tid = ? ORDER BY key", (row[0],)
            )
            for key, stored in cursor:
                line = line_of(key, stored)
                pieces.append(line)
                pieces.append("\n")
                size += len(line) + 1
                if size >= STREAM_PIECE:
                    yield "".join(pieces).encode("utf-8")
                    pieces.clear()
                    size = 0
        yield "".join(pieces).encode("utf-8")
        connection.execute("COMMIT")
    finally:
        connection.close()


def table_counts(path: Path) -> dict[tuple[str, str], int]:
    """(connector, table) -> stored row count, for the status page."""
    if not path.exists():
        return {}
    connection = _open_reader(path)
    try:
        return {
            (str(connector), str(name)): int(count)
            for connector, name, count in connection.execute(
                "SELECT connector, name, row_count FROM tables"
            )
        }
    finally:
        connection.close()
