"""Apply one committed session to the resource store, in one transaction.

* complete / initial: each ``<Table>.sorted.csv`` replaces the table's rows; every table of
  the connector must be there (a full reload that silently skipped a table would keep stale rows
  forever). The file's header (kept columns, its spelling and order) becomes the stored header.
* incremental: each ``<Table>.sorted.delta.csv`` applies its commands; a table without a file is
  unchanged. ``insert`` of a present key, or ``update``/``delete`` of a missing one, fails the
  session. ``merge`` is an update when the key is present, else an insert.

Thresholds (per table, from the mappings) are checked on the changes a session makes: the
delta's commands, or for a complete load the implied inserts/updates/deletes against the store.
Initial sessions and forced ones skip them. Percentages are of the rows stored before the session
and apply only to a table that has rows (a first load cannot be judged by percentage).

The outcome is all or nothing: ``done`` commits the rows together with the ``applied`` mark;
``blocked`` and ``failed`` roll everything back.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prepsync.config import TableSpec, Thresholds
from prepsync.server.control import BLOCKED, DONE, FAILED, FULL_MODES, Session
from prepsync.server.store import Store, TableState, Transaction, encode_key, format_record
from prepsync.server.uploads import expected_suffix, table_of_file

COMMAND_COLUMN = "command"
COMMANDS = ("insert", "update", "delete", "merge")
MAX_FIELD = 64 * 1024 * 1024  # DESIGN: a row may be at most 64 MiB


@dataclass
class TableCounts:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    rows: int = 0  # stored after the session

    def to_json(self) -> dict[str, int]:
        return {
            "inserted": self.inserted,
            "updated": self.updated,
            "deleted": self.deleted,
            "rows": self.rows,
        }


@dataclass
class Outcome:
    state: str  # DONE, BLOCKED or FAILED
    reason: str | None
    summary: dict[str, Any] = field(default_factory=dict)


class _Stop(Exception):
    """Ends the transaction with a rollback and the session in ``state``."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


def apply_session(
    store: Store,
    session: Session,
    tables: Mapping[str, TableSpec] | None,
    directory: Path,
) -> Outcome:
    """Apply ``session`` (its committed files under ``directory``); never raises for bad data.

    ``tables`` maps casefolded ConnectionTable -> spec, in configuration order; None when the
    connector is no longer configured.
    """
    if tables is None:
        return Outcome(FAILED, f"connector {session.connector!r} is no longer configured")
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD))
    plan: dict[str, tuple[TableSpec, Path]] = {}
    for entry in session.files or []:
        spec, problem = table_of_file(entry["name"], session.mode, tables)
        if spec is None:
            return Outcome(FAILED, f"{entry['name']}: {problem}")
        plan[spec.name.casefold()] = (spec, directory / entry["name"])
    if session.mode in FULL_MODES:
        missing = [
            spec.name + expected_suffix(session.mode)
            for folded, spec in tables.items()
            if folded not in plan
        ]
        if missing:
            return Outcome(
                FAILED,
                f"a {session.mode} session must carry every table; missing: " + ", ".join(missing),
            )
    check_thresholds = session.mode != "initial" and not session.forced
    summary: dict[str, Any] = {}
    try:
        with store.transaction() as transaction:
            # Configuration order, so that a session's outcome does not depend on file order.
            for folded, spec in tables.items():
                if folded not in plan:
                    continue
                path = plan[folded][1]
                state = transaction.table(session.connector, spec.name)
                before = state.row_count
                if session.mode in FULL_MODES:
                    counts = _load_full(
                        transaction, state, spec, path, session.seq, session.separator
                    )
                else:
                    counts = _apply_delta(
                        transaction, state, spec, path, session.seq, session.separator
                    )
                counts.rows = state.row_count
                summary[spec.name] = counts.to_json()
                if check_thresholds:
                    problem = threshold_problem(spec.thresholds, counts, before)
                    if problem is not None:
                        raise _Stop(BLOCKED, f"table {spec.name}: {problem}")
                transaction.save_table(state)
            transaction.mark_applied(session.id, session.seq)
    except _Stop as stop:
        return Outcome(stop.state, stop.reason, summary)
    return Outcome(DONE, None, summary)


def threshold_problem(limits: Thresholds, counts: TableCounts, stored_before: int) -> str | None:
    """Why the changes exceed a limit (0 = off), or None. Past the limit means strictly over."""
    checks = (
        (
            "inserted",
            counts.inserted,
            limits.max_inserted,
            limits.max_pct_inserted,
            "MaximumInsertedLines",
            "MaxPercentageInsertedLines",
        ),
        (
            "updated",
            counts.updated,
            limits.max_updated,
            limits.max_pct_updated,
            "MaximumUpdatedLines",
            "MaxPercentageUpdatedLines",
        ),
        (
            "deleted",
            counts.deleted,
            limits.max_deleted,
            limits.max_pct_deleted,
            "MaximumDeletedLines",
            "MaxPercentageDeletedLines",
        ),
    )
    for label, count, limit, percent_limit, name, percent_name in checks:
        if limit and count > limit:
            return f"{count} rows {label}, over {name}={limit}"
        if percent_limit and stored_before and count * 100 > percent_limit * stored_before:
            percent = count * 100 / stored_before
            return (
                f"{count} rows {label} = {percent:.2f}% of the {stored_before} stored rows, "
                f"over {percent_name}={percent_limit:g}"
            )
    return None


# ------------------------------------------------------------------------------------ reading


def separator_problem(separator: str) -> str | None:
    """Why ``separator`` cannot separate the fields of a session's files, or None.

    The agent's own rule for ``--separator``: one ASCII character, not a quote, CR or LF.
    """
    if len(separator) != 1 or separator in '"\r\n' or not separator.isascii():
        return "must be one ASCII character other than a quote, CR or LF"
    return None


def _records(path: Path, separator: str) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, fields) of every record, header included; blank lines skipped.

    The files are prepsync's canonical output: UTF-8, LF, RFC 4180 quoting, fields separated
    by the session's separator.
    """
    name = path.name
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            reader = csv.reader(stream, delimiter=separator, strict=True)
            line = 1
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:
                    raise _Stop(FAILED, f"{name}, line {line}: {error}") from None
                if fields:
                    yield line, fields
                line = reader.line_num + 1
    except UnicodeDecodeError:
        raise _Stop(FAILED, f"{name}: invalid UTF-8") from None
    except OSError as error:
        raise _Stop(FAILED, f"{name}: cannot read: {error.strerror or error}") from None


def _header(
    records: Iterator[tuple[int, list[str]]], name: str, spec: TableSpec, command: bool
) -> list[str]:
    """The kept columns as the file spells and orders them, checked against the mappings."""
    first = next(records, None)
    if first is None:
        raise _Stop(FAILED, f"{name}: empty file (no header)")
    header = first[1]
    if command:
        if header[0].casefold() != COMMAND_COLUMN:
            raise _Stop(FAILED, f"{name}: the first column must be {COMMAND_COLUMN!r}")
        header = header[1:]
    folded = [column.casefold() for column in header]
    duplicated = sorted({column for column in folded if folded.count(column) > 1})
    if duplicated:
        raise _Stop(FAILED, f"{name}: duplicated header name {duplicated[0]!r}")
    kept = {column.casefold(): column for column in spec.columns}
    missing = [column for fold, column in kept.items() if fold not in folded]
    extra = [column for column in header if column.casefold() not in kept]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(repr(column) for column in missing))
        if extra:
            parts.append("not kept " + ", ".join(repr(column) for column in extra))
        raise _Stop(FAILED, f"{name}: header differs from the kept columns ({'; '.join(parts)})")
    return header


def _key_positions(spec: TableSpec, header: Sequence[str]) -> list[int]:
    """Positions in ``header`` of the key columns: the primary key, or every column in order."""
    if spec.key is None:
        return list(range(len(header)))
    folded = [column.casefold() for column in header]
    return [folded.index(column.casefold()) for column in spec.key]


def _key(values: Sequence[str], positions: Sequence[int], name: str, line: int) -> bytes:
    key_values = [values[position] for position in positions]
    if any(value == "" for value in key_values):
        raise _Stop(FAILED, f"{name}, line {line}: null key")
    return encode_key(key_values)


def _check_width(fields: Sequence[str], width: int, name: str, line: int) -> None:
    if len(fields) != width:
        raise _Stop(FAILED, f"{name}, line {line}: expected {width} fields, found {len(fields)}")


# ------------------------------------------------------------------------------------ writing


def _load_full(
    transaction: Transaction,
    state: TableState,
    spec: TableSpec,
    path: Path,
    seq: int,
    separator: str,
) -> TableCounts:
    """Replace the table's rows by the file's; counts are the implied changes."""
    name = path.name
    records = _records(path, separator)
    header = _header(records, name, spec, command=False)
    positions = _key_positions(spec, header)
    counts = TableCounts()
    if state.header is None or list(state.header) == header:
        # Same layout: one pass, upserting; rows this session did not write are deleted after.
        for line, fields in records:
            _check_width(fields, len(header), name, line)
            key = _key(fields, positions, name, line)
            record = format_record(fields)
            old = transaction.lookup(state.tid, key)
            if old is None:
                transaction.insert(state.tid, key, record, seq)
                counts.inserted += 1
            elif old[1] == seq:
                raise _Stop(FAILED, f"{name}, line {line}: duplicate key")
            else:
                if old[0] != record:
                    counts.updated += 1
                transaction.update(state.tid, key, record, seq)
        counts.deleted = transaction.delete_not_written_by(state.tid, seq)
    else:
        counts = _relayout(transaction, state, spec, path, header, positions, seq, separator)
    state.header = tuple(header)
    state.row_count += counts.inserted - counts.deleted
    return counts


def _relayout(
    transaction: Transaction,
    state: TableState,
    spec: TableSpec,
    path: Path,
    header: list[str],
    positions: list[int],
    seq: int,
    separator: str,
) -> TableCounts:
    """A complete load whose header order or spelling differs from the stored one.

    Rare (the export's column order changed), so done simply: count the changes by looking each
    row up in the old layout, then drop every old row and insert the new ones in a second pass
    (in place upserts could collide: an association table's key follows the header order).
    """
    assert state.header is not None
    name = path.name
    old_folded = [column.casefold() for column in state.header]
    new_folded = [column.casefold() for column in header]
    # Position in the new row of each old column (the sets are equal: both match the mappings,
    # unless the mappings changed, in which case every stored row counts as deleted).
    same_columns = sorted(old_folded) == sorted(new_folded)
    to_old = [new_folded.index(column) for column in old_folded] if same_columns else []
    old_positions = _key_positions(spec, state.header) if same_columns else []
    counts = TableCounts()
    matched = 0
    for line, fields in _skip_header(_records(path, separator)):
        _check_width(fields, len(header), name, line)
        _key(fields, positions, name, line)  # null keys fail before anything is counted
        if not same_columns:
            counts.inserted += 1
            continue
        old_values = [fields[position] for position in to_old]
        old = transaction.lookup(state.tid, encode_key(old_values[p] for p in old_positions))
        if old is None:
            counts.inserted += 1
        else:
            matched += 1
            if old[0] != format_record(old_values):
                counts.updated += 1
    counts.deleted = state.row_count - matched
    transaction.delete_not_written_by(state.tid, seq)
    for line, fields in _skip_header(_records(path, separator)):
        key = _key(fields, positions, name, line)
        if transaction.lookup(state.tid, key) is not None:
            raise _Stop(FAILED, f"{name}, line {line}: duplicate key")
        transaction.insert(state.tid, key, format_record(fields), seq)
    return counts


def _skip_header(records: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
    next(records, None)
    return records


def _apply_delta(
    transaction: Transaction,
    state: TableState,
    spec: TableSpec,
    path: Path,
    seq: int,
    separator: str,
) -> TableCounts:
    """Apply the delta's commands in file order, values mapped to the stored column order."""
    name = path.name
    records = _records(path, separator)
    header = _header(records, name, spec, command=True)
    if state.header is None:
        state.header = tuple(header)
    stored_folded = [column.casefold() for column in state.header]
    if sorted(stored_folded) != sorted(column.casefold() for column in header):
        raise _Stop(
            FAILED,
            f"{name}: the stored table has columns {list(state.header)!r}; run a complete "
            "synchronization",
        )
    delta_folded = [column.casefold() for column in header]
    # +1: position 0 of a delta record is the command.
    to_stored = [delta_folded.index(column) + 1 for column in stored_folded]
    positions = _key_positions(spec, state.header)
    counts = TableCounts()
    for line, fields in records:
        _check_width(fields, len(header) + 1, name, line)
        command = fields[0].casefold()
        values = [fields[position] for position in to_stored]
        key = _key(values, positions, name, line)
        old = transaction.lookup(state.tid, key)
        if command == "merge":
            command = "insert" if old is None else "update"
        if command == "insert":
            if old is not None:
                raise _Stop(FAILED, f"{name}, line {line}: insert of a key already stored")
            transaction.insert(state.tid, key, format_record(values), seq)
            counts.inserted += 1
            state.row_count += 1
        elif command == "update":
            if old is None:
                raise _Stop(FAILED, f"{name}, line {line}: update of a key not stored")
            transaction.update(state.tid, key, format_record(values), seq)
            counts.updated += 1
        elif command == "delete":
            if old is None:
                raise _Stop(FAILED, f"{name}, line {line}: delete of a key not stored")
            transaction.delete(state.tid, key)
            counts.deleted += 1
            state.row_count -= 1
        else:
            raise _Stop(
                FAILED,
                f"{name}, line {line}: invalid command {fields[0]!r} "
                f"(expected {', '.join(COMMANDS)})",
            )
    return counts
