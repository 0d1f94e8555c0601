"""Apply one committed session to the resource store, in one transaction.

* complete / initial: each ``<Table>.sorted.csv`` replaces the table's rows; every table of
  the connector must be there (a full reload that silently skipped a table would keep stale rows
  forever). The file's header (kept columns, its spelling and order) becomes the stored header.
  The file is merge-joined with the stored rows (:mod:`prepsync.server.diff`), and only the rows
  that changed are written.
* incremental: each ``<Table>.sorted.delta.csv`` applies its commands; a table without a file is
  unchanged. ``insert`` of a present key, or ``update``/``delete`` of a missing one, fails the
  session. ``merge`` is an update when the key is present, else an insert.

Thresholds (:mod:`prepsync.server.thresholds`: entity type mappings, association mappings, the
connector) judge the changes the diff yields; initial sessions and forced ones skip them.

The outcome is all or nothing: ``done`` commits the rows together with the ``applied`` mark;
``blocked`` and ``failed`` roll everything back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prepsync.config import TableSpec
from prepsync.protocol import (
    BLOCKED,
    DELETE,
    DONE,
    FAILED,
    FULL_MODES,
    INCREMENTAL,
    INITIAL,
    INSERT,
    UPDATE,
    upload_suffix,
)
from prepsync.server.diff import (
    BATCH_ROWS,
    DataError,
    LinkCounter,
    TableDiff,
    Upload,
    key_positions,
    load_rows,
    open_upload,
    table_diff,
)
from prepsync.server.session_files import table_of_file
from prepsync.server.sessions import Session
from prepsync.server.store import (
    TableState,
    Transaction,
    snapshot,
    stored_rows,
    table_state,
)
from prepsync.server.storeapi import ResourceStore
from prepsync.server.thresholds import (
    ConnectorLimits,
    LinkCounts,
    TableCounts,
    TableLimits,
    crossed_thresholds,
    first_load_advice,
)


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


def separator_problem(separator: str) -> str | None:
    """Why ``separator`` cannot separate the fields of a session's files, or None.

    The agent's own rule for ``--separator``: one ASCII character, not a quote, CR or LF.
    """
    if len(separator) != 1 or separator in '"\r\n' or not separator.isascii():
        return "must be one ASCII character other than a quote, CR or LF"
    return None


def limits_of_specs(connector: str, tables: Mapping[str, TableSpec]) -> ConnectorLimits:
    """Entity-level limits from the specs alone (no association or connector limits)."""
    return ConnectorLimits(
        connector,
        {
            folded: TableLimits(((spec.name, spec.thresholds),) if spec.key is not None else (), ())
            for folded, spec in tables.items()
        },
        None,
    )


def session_summary(tables: Mapping[str, TableCounts], crossed: list[str]) -> dict[str, Any]:
    """What ``GET /api/sessions/{id}`` shows of a processed session."""
    return {
        "tables": {name: counts.to_json() for name, counts in tables.items()},
        "thresholds": crossed,
    }


def apply_session(
    store: ResourceStore,
    session: Session,
    tables: Mapping[str, TableSpec] | None,
    directory: Path,
    limits: ConnectorLimits | None = None,
    started: float | None = None,
) -> Outcome:
    """Apply ``session`` (its committed files under ``directory``); never raises for bad data.

    ``tables`` maps casefolded ConnectionTable -> spec, in configuration order; None when the
    connector is no longer configured. ``limits`` are the connector's thresholds (entity-level
    ones from ``tables`` when None). ``started``: when the worker claimed the session
    (``time.monotonic()``), for the summary's ``apply_seconds``.
    """
    if tables is None:
        return Outcome(FAILED, f"connector {session.connector!r} is no longer configured")
    if limits is None:
        limits = limits_of_specs(session.connector, tables)
    plan: dict[str, Path] = {}
    for entry in session.files or []:
        spec, problem = table_of_file(entry["name"], session.mode, tables)
        if spec is None:
            return Outcome(FAILED, f"{entry['name']}: {problem}")
        plan[spec.name.casefold()] = directory / entry["name"]
    if session.mode in FULL_MODES:
        missing = [
            spec.name + upload_suffix(session.mode)
            for folded, spec in tables.items()
            if folded not in plan
        ]
        if missing:
            return Outcome(
                FAILED,
                f"a {session.mode} session must carry every table; missing: " + ", ".join(missing),
            )
    counts: dict[str, TableCounts] = {}
    summary: dict[str, Any] = {}
    try:
        with store.apply_transaction() as work:
            # Configuration order, so that a session's outcome does not depend on file order.
            for folded, spec in tables.items():
                if folded in plan:
                    counts[folded] = work.apply_table(
                        session, spec, limits.table(spec.name), plan[folded]
                    )
            by_name = {tables[folded].name: table for folded, table in counts.items()}
            crossed: list[str] = []
            first_load = False
            if session.mode != INITIAL and not session.forced:
                stored = work.stored_counts(session.connector, tables, limits, counts)
                names = [spec.name for spec in tables.values()]
                crossed = crossed_thresholds(limits, names, counts, stored)
                first_load = not any(table.stored_before for table in stored.values())
            summary = session_summary(by_name, crossed)
            if crossed and first_load:
                summary["advice"] = first_load_advice(session.connector, crossed)
            if started is not None:
                summary["apply_seconds"] = round(time.monotonic() - started, 3)
            if crossed:
                raise _Stop(BLOCKED, crossed[0])
            work.commit_applied(session, summary)
    except _Stop as stop:
        return Outcome(stop.state, stop.reason, summary)
    except DataError as error:
        return Outcome(FAILED, str(error), summary)
    return Outcome(DONE, None, summary)


class SqliteWork:
    """:class:`~prepsync.server.storeapi.TableWork` of the SQLite store: the merge-join diff of
    :mod:`prepsync.server.diff` through :class:`~prepsync.server.store.Transaction`'s bulk
    paths. The session's state is written by the worker after the commit, in the sessions
    database; the ``applied`` mark written here tells a crash in between apart."""

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction

    def apply_table(
        self, session: Session, spec: TableSpec, table_limits: TableLimits, path: Path
    ) -> TableCounts:
        return _apply_table(self.transaction, session, spec, table_limits, path)

    def stored_counts(
        self,
        connector: str,
        tables: Mapping[str, TableSpec],
        limits: ConnectorLimits,
        counts: Mapping[str, TableCounts],
    ) -> dict[str, TableCounts]:
        return _stored_counts(self.transaction, connector, tables, limits, counts)

    def commit_applied(self, session: Session, summary: dict[str, Any]) -> None:
        self.transaction.mark_applied(session.id, session.seq, summary)


def _apply_table(
    transaction: Transaction,
    session: Session,
    spec: TableSpec,
    table_limits: TableLimits,
    path: Path,
) -> TableCounts:
    state = transaction.table(session.connector, spec.name)
    counts = TableCounts(stored_before=state.row_count)
    writer = _BatchWriter(transaction, state.tid, session.seq, key_only=spec.key is None)
    with snapshot(transaction.path) as stored:
        # A complete load reads the rows as they were (the snapshot) while writing them; a
        # delta looks keys up through the writer, which sees the delta's earlier commands.
        rows = transaction.connection if session.mode == INCREMENTAL else stored
        # store_path: this worker holds the write lock, so a native reader of the stored rows
        # sees what the snapshot sees.
        diff = table_diff(
            rows,
            state,
            spec,
            path,
            session.mode,
            session.separator,
            out_of_order=writer.flush,
            store_path=transaction.path,
        )
        counter = LinkCounter(table_limits.associations, diff.header, spec.key is None)
        links_before = _links_before(state, counter, stored, diff.header)
        if diff.into_empty is not None:
            upload, positions = diff.into_empty
            _load_into_empty(upload, positions, writer, counts, counter)
        else:
            _consume(diff, writer, counts, counter)
    if diff.rewrite:
        _rewrite(transaction, state.tid, session.seq, spec, path, session.separator)
    state.header = tuple(diff.header)
    state.row_count += counts.inserted - counts.deleted
    counts.rows = state.row_count
    for association in table_limits.associations:
        links = counter.counts[association.identifier]
        if not counter.per_row:  # association-only table: its rows are its links
            links.inserted, links.deleted = counts.inserted, counts.deleted
        links.stored_before = links_before.get(association.identifier, counts.stored_before)
        if counter.per_row:
            state.links[association.identifier] = (
                links.stored_before + links.inserted - links.deleted
            )
        counts.links[association.identifier] = links
    transaction.save_table(state)
    return counts


def _links_before(
    state: TableState, counter: LinkCounter, rows: Any, header: list[str]
) -> dict[str, int]:
    """Links stored per association of an entity table (a scan for those never counted)."""
    if not counter.per_row:
        return {}
    missing = [identifier for identifier in counter.counts if identifier not in state.links]
    if missing and state.row_count and state.header is not None:
        if [column.casefold() for column in state.header] != [c.casefold() for c in header]:
            stored_columns = {column.casefold() for column in state.header}
            known = [
                association
                for association in counter.associations
                if {association.column1.casefold(), association.column2.casefold()}
                <= stored_columns
            ]
            # Counted in the stored layout; an association whose columns the store does not
            # have (the mappings changed) has no stored links.
            scan = LinkCounter(known, state.header, association_only=False)
            state.links.update(dict.fromkeys(missing, 0))
        else:
            scan = counter
        state.links.update(scan.stored_links(stored_rows(rows, state.tid)))
    return {identifier: state.links.get(identifier, 0) for identifier in counter.counts}


class _BatchWriter:
    """Gathers one table's changes and writes them through the store's bulk path."""

    def __init__(self, transaction: Transaction, tid: int, seq: int, key_only: bool) -> None:
        self.transaction, self.tid, self.seq = transaction, tid, seq
        # An association-only table: rows are stored with an empty line (store.line_of).
        self.key_only = key_only
        self.inserts: list[tuple[bytes, str]] = []
        self.updates: list[tuple[bytes, str]] = []
        self.deletes: list[bytes] = []

    def flush(self) -> None:
        inserts, updates = self.inserts, self.updates
        if self.key_only:
            inserts = [(key, "") for key, _line in inserts]
            updates = [(key, "") for key, _line in updates]
        self.transaction.write_changes(self.tid, self.seq, inserts, updates, self.deletes)
        self.inserts.clear()
        self.updates.clear()
        self.deletes.clear()


def _consume(
    diff: TableDiff, writer: _BatchWriter, counts: TableCounts, counter: LinkCounter
) -> None:
    """Count the changes and, unless the table is rewritten, write them in batches."""
    write = not diff.rewrite
    per_row = counter.per_row
    inserts, updates, deletes = writer.inserts, writer.updates, writer.deletes
    inserted = updated = deleted = 0
    for command, key, line, values, stored_line in diff.changes:
        if command is INSERT:
            inserted += 1
            if write:
                assert line is not None
                inserts.append((key, line))
        elif command is UPDATE:
            updated += 1
            if write:
                assert line is not None
                updates.append((key, line))
        else:
            assert command is DELETE
            deleted += 1
            if write:
                deletes.append(key)
        if per_row:
            counter.count(command, values, line, stored_line)
        if len(inserts) + len(updates) + len(deletes) >= BATCH_ROWS:
            writer.flush()
    writer.flush()
    counts.inserted, counts.updated, counts.deleted = inserted, updated, deleted


def _load_into_empty(
    upload: Upload,
    positions: list[int],
    writer: _BatchWriter,
    counts: TableCounts,
    counter: LinkCounter,
) -> None:
    """A complete load into an empty table: every row an insert, the native reader's batches
    fed straight to the bulk path; the reader counts the links (no per-row Python at all)."""
    inserted = 0
    transaction, tid, seq = writer.transaction, writer.tid, writer.seq
    pairs = counter.pairs if counter.per_row else []
    inserted = load_rows(transaction, tid, seq, upload, positions, pairs, writer.key_only)
    if pairs:
        assert upload.native is not None
        counter.count_inserted(upload.native.link_rows)
    counts.inserted = inserted


def _rewrite(
    transaction: Transaction, tid: int, seq: int, spec: TableSpec, path: Path, separator: str
) -> None:
    """Replace every stored row by the file's (a complete load in another column layout)."""
    transaction.delete_rows(tid)
    upload = open_upload(path, spec, separator, command=False)
    positions = key_positions(spec, upload.header)
    load_rows(transaction, tid, seq, upload, positions, key_only=spec.key is None)


def _stored_counts(
    transaction: Transaction,
    connector: str,
    tables: Mapping[str, TableSpec],
    limits: ConnectorLimits,
    counts: Mapping[str, TableCounts],
) -> dict[str, TableCounts]:
    """Every table's rows and links stored before the session (for connector percentages)."""
    stored: dict[str, TableCounts] = {}
    for folded, spec in tables.items():
        if folded in counts:
            stored[folded] = counts[folded]
            continue
        state = table_state(transaction.connection, connector, spec.name)
        before = TableCounts(stored_before=0 if state is None else state.row_count)
        associations = limits.table(spec.name).associations
        if associations and state is not None and state.header is not None and state.row_count:
            counter = LinkCounter(associations, state.header, spec.key is None)
            with snapshot(transaction.path) as rows:
                known = _links_before(state, counter, rows, list(state.header))
            for association in associations:
                before.links[association.identifier] = LinkCounts(
                    stored_before=known.get(association.identifier, state.row_count)
                )
        stored[folded] = before
    return stored
