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
connector) judge the changes the diff yields, counted as they are written by the table's
:class:`~prepsync.server.thresholds.ChangeCounter`; initial sessions and forced ones skip them.

The outcome is all or nothing: ``done`` commits the rows together with the ``applied`` mark;
``blocked`` and ``failed`` roll everything back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prepsync.config import TableSpec
from prepsync.protocol import (
    BLOCKED,
    COMPLETE,
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
    TableDiff,
    load_rows,
    open_table_file,
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
    Association,
    ChangeCounter,
    ConnectorLimits,
    TableCounts,
    TableLimits,
    crossed_thresholds,
    first_load_advice,
    links_in,
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
    counters = {
        folded: ChangeCounter(limits.table(spec.name), spec.key is None)
        for folded, spec in tables.items()
    }
    summary: dict[str, Any] = {}
    try:
        with store.apply_transaction() as work:
            # Configuration order, so that a session's outcome does not depend on file order.
            carried = [
                (spec, plan[folded], counters[folded])
                for folded, spec in tables.items()
                if folded in plan
            ]
            work.load_ahead(session, carried)
            for spec, path, counter in carried:
                work.apply_table(session, spec, path, counter)
            counts = {folded: counters[folded].counts() for folded in tables if folded in plan}
            by_name = {tables[folded].name: table for folded, table in counts.items()}
            crossed: list[str] = []
            first_load = False
            if session.mode != INITIAL and not session.forced:
                # The connector's percentages are of all it stores, not only of what was sent.
                for folded, spec in tables.items():
                    if folded not in plan:
                        work.count_stored(session.connector, spec, counters[folded])
                stored = {
                    folded: counts[folded] if folded in counts else counter.counts()
                    for folded, counter in counters.items()
                }
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

    def load_ahead(
        self, session: Session, tables: Sequence[tuple[TableSpec, Path, ChangeCounter]]
    ) -> None:
        """Nothing: SQLite has one writer."""

    def apply_table(
        self, session: Session, spec: TableSpec, path: Path, count_changes: ChangeCounter
    ) -> None:
        _apply_table(self.transaction, session, spec, path, count_changes)

    def count_stored(self, connector: str, spec: TableSpec, count_changes: ChangeCounter) -> None:
        state = table_state(self.transaction.connection, connector, spec.name)
        if state is not None:
            _count_stored(self.transaction, state, count_changes)

    def commit_applied(self, session: Session, summary: dict[str, Any]) -> None:
        self.transaction.mark_applied(session.id, session.seq, summary)


def _apply_table(
    transaction: Transaction,
    session: Session,
    spec: TableSpec,
    path: Path,
    counter: ChangeCounter,
) -> None:
    state = transaction.table(session.connector, spec.name)
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
        _count_stored(transaction, state, counter, stored)
        pairs = counter.link_pairs(diff.header)
        if diff.into_empty is not None:
            upload, positions = diff.into_empty
            inserted = load_rows(
                transaction, state.tid, session.seq, upload, positions, pairs, writer.key_only
            )
            # The native reader counted the rows holding each association's pair.
            links = upload.native.link_rows if pairs and upload.native is not None else []
            counter.add(inserted, links=[(holding, 0) for holding in links])
        else:
            _write(diff, writer, counter)
    if diff.rewrite:
        _rewrite(transaction, state.tid, session.seq, spec, path, session.separator)
    state.header = tuple(diff.header)
    state.row_count = counter.rows_after
    counter.record_links(state.links)
    transaction.save_table(state)


def _count_stored(
    transaction: Transaction, state: TableState, counter: ChangeCounter, rows: Any = None
) -> None:
    """What ``state``'s table held; the links its record lacks are scanned from ``rows`` (a
    snapshot; one of its own when None) in the stored layout."""

    def scan(associations: Sequence[Association]) -> Mapping[str, int]:
        assert state.header is not None, "a table holding rows has a header"
        with nullcontext(rows) if rows is not None else snapshot(transaction.path) as reader:
            lines = (line for _key, line in stored_rows(reader, state.tid))
            return links_in(associations, state.header, lines)

    counter.stored(state.row_count, state.links, scan)


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


def _write(diff: TableDiff, writer: _BatchWriter, counter: ChangeCounter) -> None:
    """Count the changes and, unless the table is rewritten, write them in batches."""
    changes = diff.changes
    if diff.replaces_stored:
        counter.every_stored_row_deleted()
        changes = (change for change in changes if change[0] is not DELETE)
    changes = counter.counted(changes)
    if diff.rewrite:
        for _change in changes:
            pass
        return
    inserts, updates, deletes = writer.inserts, writer.updates, writer.deletes
    for command, key, line, _values, _stored_line in changes:
        if command is INSERT:
            assert line is not None
            inserts.append((key, line))
        elif command is UPDATE:
            assert line is not None
            updates.append((key, line))
        else:
            assert command is DELETE
            deletes.append(key)
        if len(inserts) + len(updates) + len(deletes) >= BATCH_ROWS:
            writer.flush()
    writer.flush()


def _rewrite(
    transaction: Transaction, tid: int, seq: int, spec: TableSpec, path: Path, separator: str
) -> None:
    """Replace every stored row by the file's (a complete load in another column layout)."""
    transaction.delete_rows(tid)
    upload, _header, positions = open_table_file(path, spec, separator, COMPLETE, None)
    load_rows(transaction, tid, seq, upload, positions, key_only=spec.key is None)
