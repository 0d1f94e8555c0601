"""What a session changes in one table: the one diff that counting, reviewing and applying share.

* A complete or initial session's ``<Table>.sorted.csv`` is merge-joined with the table's stored
  rows, both in key order (the agent sorts its files; the store's B-tree is keyed by
  :func:`~prepsync.server.store.encode_key`, whose byte order is the same): one streaming pass
  yields the implied inserts, updates and deletes, and rows that did not change cost a
  comparison of two strings.
* An incremental session's ``<Table>.sorted.delta.csv`` yields its commands, each looked up in
  the store (``merge`` becomes an insert or an update; an insert of a stored key or an update or
  delete of a missing one is an error).

A complete load must be in strictly ascending key order, as the agent writes it: that is what
makes the merge-join possible, and a file out of order is a broken upload. A delta is applied
in file order (the agent's are in key order; a key may come back, each command sees the
previous ones), so the review's paging by key assumes the agent's order.

A change is ``(command, key, line, values, stored_line)``: ``line`` is the new row (insert,
update), ``values`` its values when the diff has them at hand (a delta's; None for a complete
load's, parsed from ``line`` only where needed), ``stored_line`` the row as stored (update,
delete). Lines are canonical
CSV records: REFERENCE §2 output quoting with ``,`` as separator, whatever the session's separator.
"""

from __future__ import annotations

import csv
import itertools
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prepsync._upload import (
    CopyRows,
    FullDiff,
    StoredRows,
    UploadReader,
    native_store_problem,
)
from prepsync.config import TableSpec
from prepsync.errors import DataError as DataError  # the server's modules take it from here
from prepsync.protocol import COMMAND_COLUMN, COMMANDS, DELETE, INCREMENTAL, INSERT, MERGE, UPDATE
from prepsync.server.store import (
    TableState,
    Transaction,
    encode_key,
    format_record,
    lookup,
    stored_batches,
    stored_rows,
)

# Rows per batch of a complete load (the native reader's batches, the store's executemany):
# big enough that per-call overheads vanish, small enough that a batch of long rows stays a
# few MiB.
BATCH_ROWS = 4096

Change = tuple[str, bytes, str | None, list[str] | None, str | None]


# ----------------------------------------------------------------------------------- reading


MAX_FIELD = 64 * 1024 * 1024  # DESIGN: a row may be at most 64 MiB
# A stored line holds what the native reader took (a record of up to 64 MiB): the csv module
# must take a value as long (its default limit is 128 KiB).
csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD))


def parse_line(line: str) -> list[str]:
    """The values of a stored (canonical, ``,``-separated) line."""
    if '"' not in line:
        return line.split(",")
    return next(csv.reader((line,), strict=True))


@dataclass
class Upload:
    """A session's file for one table, its header checked against the table's kept columns,
    open in the native reader (the server's one reader of session files): a complete load's
    rows come as (key, stored line) built in C (:func:`keyed_batches`), a delta's records as
    (line, values) (:func:`delta_changes`)."""

    name: str
    header: list[str]  # the kept columns as the file spells and orders them (no command)
    native: UploadReader


def open_upload(path: Path, spec: TableSpec, separator: str, command: bool) -> Upload:
    """``command``: a delta (its first column is the command)."""
    name = path.name
    try:
        native = UploadReader(str(path), name, separator)
    except OSError as error:
        raise DataError(f"{name}: cannot read: {error.strerror or error}") from None
    try:
        header = native.header()
        if command:
            if header[0].casefold() != COMMAND_COLUMN:
                raise DataError(f"{name}: the first column must be {COMMAND_COLUMN!r}")
            header = header[1:]
        _check_header(name, header, spec)
    except BaseException:
        native.close()
        raise
    return Upload(name, header, native)


def open_table_file(
    path: Path, spec: TableSpec, separator: str, mode: str, stored_header: Sequence[str] | None
) -> tuple[Upload, list[str], list[int]]:
    """A session's file for ``spec`` opened, with the layout of its changes' rows and the key's
    positions in that layout.

    A complete load's rows are in the file's layout (a table stored in another is rewritten).
    A delta's commands apply to the stored rows, in the stored layout (``stored_header``; the
    file's when the table was never loaded), so their columns must be the stored ones.
    """
    incremental = mode == INCREMENTAL
    upload = open_upload(path, spec, separator, command=incremental)
    header = upload.header
    if incremental and stored_header is not None:
        header = list(stored_header)
        if sorted(column.casefold() for column in header) != sorted(
            column.casefold() for column in upload.header
        ):
            raise DataError(
                f"{upload.name}: the stored table has columns {header!r}; run a complete "
                "synchronization"
            )
    return upload, header, key_positions(spec, header)


def _check_header(name: str, header: list[str], spec: TableSpec) -> None:
    folded = [column.casefold() for column in header]
    duplicated = sorted({column for column in folded if folded.count(column) > 1})
    if duplicated:
        raise DataError(f"{name}: duplicated header name {duplicated[0]!r}")
    kept = {column.casefold(): column for column in spec.columns}
    missing = [column for fold, column in kept.items() if fold not in folded]
    extra = [column for column in header if column.casefold() not in kept]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(repr(column) for column in missing))
        if extra:
            parts.append("not kept " + ", ".join(repr(column) for column in extra))
        raise DataError(f"{name}: header differs from the kept columns ({'; '.join(parts)})")


def key_positions(spec: TableSpec, header: Sequence[str]) -> list[int]:
    """Positions in ``header`` of the key columns: the primary key, or every column in order."""
    if spec.key is None:
        return list(range(len(header)))
    folded = [column.casefold() for column in header]
    return [folded.index(column.casefold()) for column in spec.key]


def key_maker(positions: Sequence[int], name: str) -> Callable[[Sequence[str], int], bytes]:
    """values, line -> encoded key; a null key value is an error naming the line."""
    if len(positions) == 1:
        (position,) = positions

        def single(values: Sequence[str], line: int) -> bytes:
            value = values[position]
            if not value:
                raise DataError(f"{name}, line {line}: null key")
            encoded = value.encode("utf-8")
            if b"\x00" in encoded:
                encoded = encoded.replace(b"\x00", b"\x00\x01")
            return encoded + b"\x00\x00"

        return single

    def several(values: Sequence[str], line: int) -> bytes:
        key_values = [values[position] for position in positions]
        if not all(key_values):
            raise DataError(f"{name}, line {line}: null key")
        joined = "\x00\x00".join(key_values)
        if "\x00" in "".join(key_values):  # NUL in a value: escape it (rare)
            return encode_key(key_values)
        return (joined + "\x00\x00").encode("utf-8")

    return several


# ----------------------------------------------------------------------------------- diffing


def keyed_batches(
    upload: Upload, positions: Sequence[int], link_pairs: Sequence[tuple[int, int]] = ()
) -> Iterator[list[tuple[bytes, str]]]:
    """A complete load's rows as batches of (key, stored line), checked by the native reader:
    width, null key, strictly ascending keys, no CR outside quotes. ``link_pairs``: column
    pairs whose rows with both values non-null ``upload.native.link_rows`` counts."""
    reader = upload.native
    reader.configure(positions, True, link_pairs)
    try:
        while batch := reader.rows(BATCH_ROWS):
            yield batch
    finally:
        reader.close()


def load_rows(
    transaction: Transaction,
    tid: int,
    seq: int,
    upload: Upload,
    positions: Sequence[int],
    link_pairs: Sequence[tuple[int, int]] = (),
    key_only: bool = False,
) -> int:
    """A complete load into an empty table through the store's bulk path
    (:meth:`~prepsync.server.store.Transaction.load_rows`), checked by the native reader as in
    :func:`keyed_batches`; returns the rows inserted."""
    reader = upload.native
    reader.configure(positions, True, link_pairs)
    try:
        return transaction.load_rows(tid, seq, reader, key_only)
    finally:
        reader.close()


def full_changes(
    upload: Upload,
    positions: Sequence[int],
    stored: StoredRows
    | CopyRows
    | Iterable[list[tuple[bytes, str]]]
    | Iterable[list[tuple[bytes, bytes]]],
    after: bytes | None = None,
    key_only: bool = False,
) -> Iterator[Change]:
    """The merge-join of a complete load with the stored rows (read natively from SQLite or
    from PostgreSQL's COPY, or batches of
    (key, line), the line as str or UTF-8 bytes, both in key order), done by the native
    :class:`~prepsync._upload.FullDiff`.

    ``after``: only changes of keys above it (``stored`` must already start there). The rows
    of the two sides are in the same layout, so a row whose line equals the stored one is
    unchanged (equal lines hold equal values, hence equal keys): most rows of a daily load cost
    one memcmp in C and no Python at all. A line that differs from the stored one of the same
    key is compared by values here (a store written before lines were canonical may quote
    otherwise); values are parsed only for those rows.
    """
    reader = upload.native
    reader.configure(positions, True)
    # key_only (an association-only table, every column in the key): equal keys are equal
    # rows, whatever the stored line (empty, or a store from before's own quoting).
    merge = FullDiff(reader, stored, INSERT, UPDATE, DELETE, after, key_only)
    try:
        while changes := merge.changes(BATCH_ROWS):
            for command, key, line, stored_line in changes:
                if command is UPDATE:
                    assert line is not None and stored_line is not None
                    if parse_line(stored_line) == parse_line(line):
                        continue
                yield command, key, line, None, stored_line
    finally:
        reader.close()
        if isinstance(stored, StoredRows | CopyRows):
            stored.close()  # ends its read transaction now, not when it is collected


def batched(rows: Iterable[tuple[bytes, str]]) -> Iterator[list[tuple[bytes, str]]]:
    """``rows`` in lists of at most BATCH_ROWS (what :func:`full_changes` takes)."""
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, BATCH_ROWS)):
        yield batch


def delta_changes(
    upload: Upload,
    stored_header: Sequence[str],
    positions: Sequence[int],
    find: Callable[[bytes], str | None],
    after: bytes | None = None,
    out_of_order: Callable[[], None] | None = None,
) -> Iterator[Change]:
    """An incremental session's commands, values in the stored column order.

    ``positions`` are the key positions in ``stored_header``; ``find`` looks a key up in the
    store. A delete yields the row as stored. ``out_of_order`` is called before the lookup of a
    key not above the previous one: a writer flushes its pending batch there, so that the lookup
    sees the earlier commands (in key order, no key can come back).
    """
    name = upload.name
    delta_folded = [column.casefold() for column in upload.header]
    # +1: position 0 of a delta record is the command.
    to_stored = [delta_folded.index(column.casefold()) + 1 for column in stored_header]
    make_key = key_maker(positions, name)
    previous: bytes | None = None
    # The reader has checked each record's width against the header, its UTF-8 and its CRs.
    for line_number, fields in _delta_records(upload):
        values = [fields[position] for position in to_stored]
        key = make_key(values, line_number)
        if previous is not None and key <= previous and out_of_order is not None:
            out_of_order()
        previous = key
        command = fields[0].casefold()
        if command not in COMMANDS:
            raise DataError(
                f"{name}, line {line_number}: invalid command {fields[0]!r} "
                f"(expected {', '.join(COMMANDS)})"
            )
        if after is not None and key <= after:
            continue
        old = find(key)
        if command == MERGE:
            command = INSERT if old is None else UPDATE
        if command == INSERT:
            if old is not None:
                raise DataError(f"{name}, line {line_number}: insert of a key already stored")
            yield INSERT, key, format_record(values), values, None
        elif command == UPDATE:
            if old is None:
                raise DataError(f"{name}, line {line_number}: update of a key not stored")
            yield UPDATE, key, format_record(values), values, old
        else:
            if old is None:
                raise DataError(f"{name}, line {line_number}: delete of a key not stored")
            yield DELETE, key, None, None, old


def _delta_records(upload: Upload) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of a delta's records, in file order; the reader closed at the end."""
    try:
        while batch := upload.native.records(BATCH_ROWS):
            yield from batch
    finally:
        upload.native.close()


def _sorted_rows(rows: Iterable[tuple[bytes, str]]) -> Iterator[tuple[bytes, str]]:
    """``rows`` in key order, sorted by a private temporary SQLite database (on disk, so a
    table of any size sorts in bounded memory)."""
    with tempfile.TemporaryDirectory(prefix="prepsync-relayout-") as directory:
        connection = sqlite3.connect(Path(directory) / "sort.sqlite3", isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=OFF")
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute(
                "CREATE TABLE rows (key BLOB PRIMARY KEY, line TEXT NOT NULL) WITHOUT ROWID"
            )
            connection.execute("BEGIN")
            connection.executemany("INSERT INTO rows VALUES (?, ?)", rows)
            connection.execute("COMMIT")
            cursor = connection.execute("SELECT key, line FROM rows ORDER BY key")
            while batch := cursor.fetchmany(4096):
                yield from batch
        finally:
            connection.close()


def relayout_rows(
    stored: Iterator[tuple[bytes, str]],
    stored_header: Sequence[str],
    header: Sequence[str],
    positions: Sequence[int],
    association_only: bool,
) -> Iterator[tuple[bytes, str]]:
    """The stored rows in the layout of ``header`` (same columns, other order or spelling),
    re-keyed, in key order.

    Rare: the export's column order changed. An entity table's key is one column, so its order
    does not change; an association-only table is keyed by all columns in header order, so its
    rows are sorted again.
    """
    stored_folded = [column.casefold() for column in stored_header]
    from_stored = [stored_folded.index(column.casefold()) for column in header]
    make_key = key_maker(positions, "store")

    def moved() -> Iterator[tuple[bytes, str]]:
        for _key, line in stored:
            old = parse_line(line)
            values = [old[position] for position in from_stored]
            yield make_key(values, 0), format_record(values)

    if association_only and list(stored_folded) != [column.casefold() for column in header]:
        return _sorted_rows(moved())
    return moved()


# ----------------------------------------------------------------------------- one table's diff


@dataclass
class TableDiff:
    header: list[str]  # the columns of the changes' lines
    changes: Iterator[Change]
    # A complete load whose stored rows are in another layout: applying it rewrites the table.
    rewrite: bool = False
    # The kept columns changed: every stored row is deleted (its stored line in the stored
    # layout, not in ``header``'s), every row of the file inserted.
    replaces_stored: bool = False
    # A complete load into an empty table (every row an insert): the file and its key
    # positions, for the bulk load (:func:`keyed_batches`).
    into_empty: tuple[Upload, list[int]] | None = None


def table_diff(
    rows: sqlite3.Connection,
    state: TableState | None,
    spec: TableSpec,
    path: Path,
    mode: str,
    separator: str,
    after: bytes | None = None,
    out_of_order: Callable[[], None] | None = None,
    store_path: Path | None = None,
) -> TableDiff:
    """The changes of ``path`` (a session's file for ``spec``) against the stored table.

    ``rows`` reads the stored rows: for a complete load a snapshot while applying, for a delta
    the writer's own connection (its lookups must see the delta's earlier commands, flushed by
    ``out_of_order``); ``state`` is the table as stored, None or header None when never loaded.
    ``store_path``: the store, when nothing can be committed to it before the diff has read the
    rows (the worker's own apply, which holds the write lock): a complete load then reads them
    natively (:class:`~prepsync._upload.StoredRows`), in a read transaction of its own that
    sees what ``rows`` sees.
    """
    stored_header = None if state is None else state.header
    upload, header, positions = open_table_file(path, spec, separator, mode, stored_header)
    if mode == INCREMENTAL:
        state_tid = None if state is None else state.tid

        def find(key: bytes) -> str | None:
            return None if state_tid is None else lookup(rows, state_tid, key)

        return TableDiff(
            header, delta_changes(upload, header, positions, find, after, out_of_order)
        )
    if state is None or stored_header is None or state.row_count == 0:
        if after is None:
            inserts = (
                (INSERT, key, line, None, None)
                for batch in keyed_batches(upload, positions)
                for key, line in batch
            )
            return TableDiff(header, inserts, into_empty=(upload, positions))
        return TableDiff(header, full_changes(upload, positions, (), after))
    if list(stored_header) == header:
        source: StoredRows | Iterator[list[tuple[bytes, bytes]]]
        if store_path is not None and native_store_problem() is None:
            source = StoredRows(str(store_path), state.tid, after)
        else:
            source = stored_batches(rows, state.tid, after)
        return TableDiff(header, full_changes(upload, positions, source, after, spec.key is None))
    stored = stored_rows(rows, state.tid)
    if sorted(column.casefold() for column in stored_header) == sorted(
        column.casefold() for column in header
    ):
        moved = relayout_rows(stored, stored_header, header, positions, spec.key is None)
        if after is not None:
            moved = ((key, line) for key, line in moved if key > after)
    else:
        # The mappings changed the kept columns: every stored row goes, every new one comes.
        def every_stored_row_deleted() -> Iterator[Change]:
            yield from full_changes(upload, positions, (), after)
            for key, line in stored:
                if after is None or key > after:
                    yield DELETE, key, None, None, line

        return TableDiff(header, every_stored_row_deleted(), rewrite=True, replaces_stored=True)
    return TableDiff(header, full_changes(upload, positions, batched(moved), after), rewrite=True)
