"""Sessions: their states and transitions, in ``<data>/sessions.sqlite3``.

Sessions live in their own database, not in the resource store, because SQLite has one writer
per database: the worker holds the store's write lock for the whole of a (possibly long)
session, and the API must still open sessions, record uploads and take commits meanwhile.
The link between the two is the store's ``applied`` table (see :mod:`prepsync.server.store`).

States (REFERENCE §7) and the only transitions made::

    open -> queued (commit) | cancelled (cancel, abandoned, superseded, orphaned)
    queued -> processing (worker) | cancelled (cancel, superseded)
    processing -> done | failed | blocked (worker); -> queued at startup (crash recovery)
    blocked -> queued, forced (force) | cancelled (cancel, superseded)
    done, failed, cancelled: final

Every transition is one conditional UPDATE (``WHERE state IN (...)``), so the API (event loop)
and the worker (its thread), each with its own connection, can race without a lost update.

Ordering invariant: ``seq`` is the opening order; per connector, the session with the lowest
``seq`` that is not final is the *head*, and only a queued head is ever processed.

Ownership: ``client`` is the OpenID client that opened the session; only it may upload and
commit (see :func:`prepsync.server.guards.owned_session_of`). Sessions recorded before the
column existed have none, and stay open to every client allowed on their connector.

One agent per connector: an incremental session is a delta against its agent's baselines, so
only the agent delivering the connector (:meth:`SessionDatabase.connector_agent`) may open one;
a complete or initial session from any agent takes the connector over (a host migration).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prepsync.private import prepare_sqlite
from prepsync.protocol import (
    BLOCKED,
    CANCELLED,
    DEFAULT_SEPARATOR,
    DONE,
    FAILED,
    FINAL_STATES,
    FULL_MODES,
    OPEN,
    PROCESSING,
    QUEUED,
)

# "Not yet being processed": what a complete/initial opening cancels and what cancel accepts.
CANCELLABLE_STATES = (OPEN, QUEUED, BLOCKED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    connector TEXT NOT NULL,
    agent TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    forced INTEGER NOT NULL DEFAULT 0,
    files TEXT,
    summary TEXT,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    active_at REAL NOT NULL,
    separator TEXT NOT NULL DEFAULT ',',
    client TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_connector ON sessions (connector, seq);
CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions (state, seq);
"""

_COLUMNS = (
    "seq, id, connector, agent, mode, state, reason, forced, files, summary, "
    "opened_at, updated_at, active_at, separator, client"
)


@dataclass(frozen=True)
class Session:
    seq: int
    id: str
    connector: str
    agent: str
    mode: str
    state: str
    reason: str | None
    forced: bool
    files: list[dict[str, Any]] | None  # as committed: name, size, xxh3_128
    summary: dict[str, Any] | None  # per-table counts once processed
    opened_at: float
    updated_at: float
    active_at: float
    # The field separator of the session's files: the agent's --separator (store rows are
    # always kept with ",").
    separator: str = DEFAULT_SEPARATOR
    client: str | None = None  # the OpenID client that opened it (None: before ownership)

    def to_json(self) -> dict[str, Any]:
        """GET /api/sessions/{id}: the four fields of REFERENCE §7, and what an operator needs."""
        return {
            "id": self.id,
            "connector": self.connector,
            "mode": self.mode,
            "state": self.state,
            "agent": self.agent,
            "client": self.client,
            "reason": self.reason,
            "forced": self.forced,
            # Per-table counts and every threshold crossed, once processed.
            "tables": None if self.summary is None else self.summary.get("tables"),
            "thresholds": None if self.summary is None else self.summary.get("thresholds"),
            # How to proceed, when the server knows better than the thresholds' text (a first
            # load blocked by the connector's defaults).
            "advice": None if self.summary is None else self.summary.get("advice"),
            # Seconds the worker spent applying (or judging) it; None before or without.
            "apply_seconds": None if self.summary is None else self.summary.get("apply_seconds"),
            "opened_at": _iso(self.opened_at),
            "updated_at": _iso(self.updated_at),
        }


class ForeignAgent(Exception):
    """An incremental session opened by another agent than the one delivering the connector:
    its deltas are against its own baselines, not the store's, so it is refused at open."""

    def __init__(self, connector: str, owner: str, agent: str) -> None:
        super().__init__(
            f"connector {connector} is delivered by agent {owner!r}: an incremental session "
            f"of agent {agent!r} is refused (its baselines are not the connector's); a complete "
            f"synchronization from {agent!r} takes the connector over"
        )
        self.owner = owner


class SupersededChanged(Exception):
    """:meth:`SessionDatabase.open` was given the sessions it may cancel (those the caller
    holds) and would cancel another one too: nothing was recorded; hold these and try again."""

    def __init__(self, session_ids: list[str]) -> None:
        super().__init__(f"sessions to supersede changed: {', '.join(session_ids)}")
        self.session_ids = session_ids


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _session(row: tuple[Any, ...]) -> Session:
    return Session(
        seq=row[0],
        id=row[1],
        connector=row[2],
        agent=row[3],
        mode=row[4],
        state=row[5],
        reason=row[6],
        forced=bool(row[7]),
        files=None if row[8] is None else json.loads(row[8]),
        summary=None if row[9] is None else json.loads(row[9]),
        opened_at=row[10],
        updated_at=row[11],
        active_at=row[12],
        separator=row[13],
        client=row[14],
    )


def canonical_session_id(text: str) -> str | None:
    """The session id as the server writes it (lower-case hyphenated GUID), or None.

    Checked before an id is used in a path or a query: only such ids name directories.
    """
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return None
    canonical = str(parsed)
    return canonical if canonical == text.lower() else None


class SessionDatabase:
    """One connection to the sessions database. Each thread opens its own."""

    def __init__(self, path: Path) -> None:
        prepare_sqlite(path)  # 0600 before SQLite creates it 0644 (and its -wal, -shm alike)
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        # A 202 to a commit lets the agent advance its baselines: it must survive power loss.
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.execute("PRAGMA busy_timeout=30000")
        self._connection.executescript(_SCHEMA)
        columns = {row[1] for row in self._connection.execute("PRAGMA table_info(sessions)")}
        if "separator" not in columns:  # a data directory from before the column existed
            self._connection.execute(
                "ALTER TABLE sessions ADD COLUMN separator TEXT NOT NULL DEFAULT ','"
            )
        if "client" not in columns:  # a data directory from before sessions were owned
            self._connection.execute("ALTER TABLE sessions ADD COLUMN client TEXT")

    def close(self) -> None:
        self._connection.close()

    def _begin(self) -> None:
        # IMMEDIATE: take the write lock up front, so read-then-write sequences cannot interleave.
        self._connection.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        self._connection.execute("COMMIT")

    def _rollback(self) -> None:
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")

    # ---------------------------------------------------------------------------- reads

    def get(self, session_id: str) -> Session | None:
        row = self._connection.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return None if row is None else _session(row)

    def recent(self, connector: str, limit: int) -> list[Session]:
        """The connector's sessions, newest (last opened) first."""
        rows = self._connection.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE connector = ? ORDER BY seq DESC LIMIT ?",
            (connector, limit),
        ).fetchall()
        return [_session(row) for row in rows]

    def unapplied_before(self, session: Session) -> Session | None:
        """The latest committed session before ``session`` (same connector) whose changes did
        not reach the store (failed, or cancelled after its commit) since the last done full
        load; None when the store holds every committed change.

        The agent advances its baselines once a commit is accepted, so such a session's
        changes will never be sent again: a delta computed after it cannot be applied on top.
        """
        rows = self._connection.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE connector = ? AND seq < ? "
            "AND files IS NOT NULL ORDER BY seq DESC",
            (session.connector, session.seq),
        ).fetchall()
        for row in rows:
            earlier = _session(row)
            if earlier.state == DONE:
                if earlier.mode in FULL_MODES:
                    return None
                continue
            if earlier.state in (FAILED, CANCELLED):
                return earlier
        return None

    # The one query behind "one agent per connector": kept apart and plain SQL on purpose.
    def connector_agent(self, connector: str) -> str | None:
        """The agent delivering the connector, whose baselines its deltas are computed against:
        the agent of its newest session that was committed (whatever its verdict: the agent's
        baselines moved at the commit) or that is a complete or initial session still open
        (a complete session takes the connector over as it opens; one abandoned or cancelled
        before its commit took nothing over). None when the connector has no such session.
        """
        row = self._connection.execute(
            "SELECT agent FROM sessions WHERE connector = ? AND (files IS NOT NULL "
            f"OR (state = ? AND mode IN ({','.join('?' * len(FULL_MODES))}))) "
            "ORDER BY seq DESC LIMIT 1",
            (connector, OPEN, *sorted(FULL_MODES)),
        ).fetchone()
        return None if row is None else str(row[0])

    def unfinished(self) -> list[Session]:
        """Every session not in a final state, in opening order."""
        placeholders = ",".join("?" * len(FINAL_STATES))
        rows = self._connection.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE state NOT IN ({placeholders}) ORDER BY seq",
            tuple(FINAL_STATES),
        ).fetchall()
        return [_session(row) for row in rows]

    def state_counts(self) -> dict[tuple[str, str], int]:
        """How many sessions each (connector, state) has: the metrics' view, read per scrape."""
        rows = self._connection.execute(
            "SELECT connector, state, COUNT(*) FROM sessions GROUP BY connector, state"
        ).fetchall()
        return {(row[0], row[1]): row[2] for row in rows}

    # ---------------------------------------------------------------------------- writes

    @staticmethod
    def _superseded(
        connector: str, agent: str, mode: str, client: str
    ) -> tuple[str, tuple[str, ...]]:
        """The sessions an opening cancels, as a WHERE condition and its arguments (see
        :meth:`open`)."""
        if mode in FULL_MODES:
            return "connector = ? AND state IN (?, ?, ?)", (connector, *CANCELLABLE_STATES)
        return (
            "connector = ? AND state = ? AND agent = ? AND client IS ?",
            (connector, OPEN, agent, client),
        )

    def superseded(self, connector: str, agent: str, mode: str, client: str) -> list[str]:
        """The ids of the sessions an opening would cancel now, in opening order."""
        condition, arguments = self._superseded(connector, agent, mode, client)
        rows = self._connection.execute(
            f"SELECT id FROM sessions WHERE {condition} ORDER BY seq", arguments
        ).fetchall()
        return [row[0] for row in rows]

    def open(
        self,
        connector: str,
        agent: str,
        mode: str,
        session_id: str,
        client: str,
        separator: str = DEFAULT_SEPARATOR,
        held: Collection[str] | None = None,
    ) -> list[str]:
        """Record a new open session; returns the ids of the sessions it cancelled.

        An incremental session of another agent than the connector's (:meth:`connector_agent`)
        raises :class:`ForeignAgent` and records nothing.

        A complete/initial session cancels every session of its connector not yet processed
        (it reloads every table: their changes are moot). Any session cancels the ``open``
        sessions of the same agent and client on its connector: one agent runs one prepare per
        connector at a time, so those are orphans of a killed run, and an orphan would hold
        every later session of the connector back until the session timeout.

        ``held``: the sessions the caller holds against other processes' uploads and commits
        (see :meth:`superseded`); when the opening would cancel one outside them, it raises
        :class:`SupersededChanged` and records nothing.
        """
        now = time.time()
        self._begin()
        try:
            if mode not in FULL_MODES:
                # In the transaction: no complete session can take the connector over between
                # this check and the insert.
                owner = self.connector_agent(connector)
                if owner is not None and owner != agent:
                    raise ForeignAgent(connector, owner, agent)
            if mode in FULL_MODES:
                reason = f"superseded by {mode} session {session_id}"
            else:
                reason = f"left open by an interrupted run: agent {agent} opened {session_id}"
            condition, arguments = self._superseded(connector, agent, mode, client)
            cancelled = self.superseded(connector, agent, mode, client)
            if held is not None and not set(cancelled) <= set(held):
                raise SupersededChanged([other for other in cancelled if other not in held])
            self._connection.execute(
                f"UPDATE sessions SET state = ?, reason = ?, updated_at = ? WHERE {condition}",
                (CANCELLED, reason, now, *arguments),
            )
            self._connection.execute(
                "INSERT INTO sessions (id, connector, agent, mode, state, opened_at, updated_at, "
                "active_at, separator, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, connector, agent, mode, OPEN, now, now, now, separator, client),
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return cancelled

    def _transition(
        self, session_id: str, from_states: tuple[str, ...], to_state: str, **fields: Any
    ) -> bool:
        """Move one session if it is in ``from_states``; True when it moved."""
        assignments = ["state = ?", "updated_at = ?"]
        values: list[Any] = [to_state, time.time()]
        for name, value in fields.items():
            assignments.append(f"{name} = ?")
            values.append(value)
        placeholders = ",".join("?" * len(from_states))
        cursor = self._connection.execute(
            f"UPDATE sessions SET {', '.join(assignments)} "
            f"WHERE id = ? AND state IN ({placeholders})",
            (*values, session_id, *from_states),
        )
        return cursor.rowcount == 1

    def touch(self, session_id: str) -> None:
        """Record upload activity: an open session is abandoned only after a quiet timeout."""
        self._connection.execute(
            "UPDATE sessions SET active_at = ? WHERE id = ? AND state = ?",
            (time.time(), session_id, OPEN),
        )

    def commit(self, session_id: str, files: list[dict[str, Any]]) -> bool:
        return self._transition(session_id, (OPEN,), QUEUED, files=json.dumps(files))

    def force(self, session_id: str) -> bool:
        return self._transition(session_id, (BLOCKED,), QUEUED, forced=1, reason=None)

    def cancel(self, session_id: str, reason: str) -> bool:
        return self._transition(session_id, CANCELLABLE_STATES, CANCELLED, reason=reason)

    def cancel_open(self, session_id: str, reason: str) -> bool:
        """Cancel a session only while it is ``open`` (not yet committed): what a delivering
        client may do to its own session; a committed one is an operator's to settle."""
        return self._transition(session_id, (OPEN,), CANCELLED, reason=reason)

    def abandon_idle(self, idle_before: float, reason: str) -> list[str]:
        """Cancel open sessions with no activity since ``idle_before``; returns their ids."""
        self._begin()
        try:
            rows = self._connection.execute(
                "SELECT id FROM sessions WHERE state = ? AND active_at < ?", (OPEN, idle_before)
            ).fetchall()
            ids = [row[0] for row in rows]
            for session_id in ids:
                self._transition(session_id, (OPEN,), CANCELLED, reason=reason)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return ids

    def claim_next(self) -> Session | None:
        """Move the next session to process to ``processing`` and return it, or None.

        The next one is the queued *head* (lowest seq not final, per connector) with the lowest
        seq: a connector whose head is open, blocked or processing waits.
        """
        self._begin()
        try:
            heads: dict[str, Session] = {}
            for session in self.unfinished():
                heads.setdefault(session.connector, session)
            ready = sorted(
                (head for head in heads.values() if head.state == QUEUED), key=lambda s: s.seq
            )
            claimed = None
            if ready:
                claimed = ready[0]
                moved = self._transition(claimed.id, (QUEUED,), PROCESSING)
                assert moved  # we hold the write lock since reading it as queued
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return None if claimed is None else self.get(claimed.id)

    def finish(
        self, session_id: str, state: str, reason: str | None, summary: dict[str, Any] | None
    ) -> None:
        self._transition(
            session_id,
            (PROCESSING,),
            state,
            reason=reason,
            summary=None if summary is None else json.dumps(summary),
        )

    def processing(self) -> list[Session]:
        """Sessions in ``processing``: at startup, those a crash or a stop interrupted."""
        rows = self._connection.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE state = ? ORDER BY seq", (PROCESSING,)
        ).fetchall()
        return [_session(row) for row in rows]

    def set_state(self, session_id: str, from_state: str, to_state: str) -> bool:
        return self._transition(session_id, (from_state,), to_state)

    def orphans(self) -> list[Session]:
        """``processing`` sessions that no worker applies: with one worker per data directory
        (SQLite), every one the worker meets between its sessions (a crash, or a stop)."""
        return self.processing()

    def release(self, session: Session) -> None:
        """The worker is done with a claimed session (its outcome is recorded). Nothing is held
        here: the one worker is the only one that claims."""
