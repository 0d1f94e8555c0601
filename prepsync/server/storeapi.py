"""The store interface the worker and the endpoints call, whichever database holds the rows.

Two implementations: SQLite files in the data directory (:mod:`prepsync.server.store` and
:mod:`prepsync.server.sessions`, the default) and PostgreSQL (:mod:`prepsync.server.pgstore`,
``prepsync serve --database postgresql://...``). What a session goes through, and who calls it:

* **claim the next session**: :meth:`SessionQueue.claim_next` (the worker), which moves the
  queued head of a connector to ``processing``; :meth:`SessionQueue.release` once its outcome is
  recorded. :meth:`SessionQueue.orphans` are ``processing`` sessions that nobody applies any
  more (a crash): the worker queues them again, or marks them done when the store holds them.
* **begin**: :meth:`ResourceStore.apply_transaction` opens the one transaction of a session;
  the block ending normally **commits**, an exception **rolls back**.
* **load a complete table / apply a delta**: :meth:`TableWork.load_ahead` (every table the
  session carries, in the order they will be applied: a store may start loading some at once,
  PostgreSQL does for initial loads), then :meth:`TableWork.apply_table` (one table of the
  session), which **counts the changes for the thresholds in the same pass** into its
  ``count_changes``, a :class:`~prepsync.server.thresholds.ChangeCounter`: what the table held
  before, then its changes one at a time or as totals of a bulk path. The counting and its rules
  (what a link is, what a percentage is of) are the counter's; a store only feeds it.
* :meth:`TableWork.count_stored`: what a table the session does not carry holds, into its
  counter (the connector's percentages are of everything it stores).
* **commit with the applied mark**: :meth:`TableWork.commit_applied`: the session is recorded
  as applied in the same transaction as its rows (PostgreSQL also records its final state
  there: sessions and rows are in one database).
* **list changes for the review endpoint**: :meth:`Backend.review`.
* what anyone may read: :meth:`Backend.resources_csv` (``GET .../resources``, byte-identical
  across stores) and :meth:`Backend.table_counts` (the status page).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from prepsync.config import TableSpec
from prepsync.server.diff import TableDiff
from prepsync.server.sessions import Session
from prepsync.server.thresholds import ChangeCounter


class TableWork(Protocol):
    """Row work inside one session's transaction."""

    def load_ahead(
        self, session: Session, tables: Sequence[tuple[TableSpec, Path, ChangeCounter]]
    ) -> None: ...

    def apply_table(
        self, session: Session, spec: TableSpec, path: Path, count_changes: ChangeCounter
    ) -> None: ...

    def count_stored(
        self, connector: str, spec: TableSpec, count_changes: ChangeCounter
    ) -> None: ...

    def commit_applied(self, session: Session, summary: dict[str, Any]) -> None: ...


class ResourceStore(Protocol):
    """The worker's handle on the rows (one thread uses it)."""

    # Errors that say the store (not the session) is in trouble: the session is queued again.
    store_errors: tuple[type[BaseException], ...]

    def apply_transaction(self) -> AbstractContextManager[TableWork]: ...

    def was_applied(self, session_id: str) -> bool: ...

    # The outcome's summary recorded with the applied mark, for a session whose state a crash
    # did not record (None where the store records both at once, or for an older mark).
    def applied_summary(self, session_id: str) -> dict[str, Any] | None: ...

    def interrupt(self) -> None: ...

    def after_session(self) -> None: ...

    def close(self) -> None: ...


class SessionQueue(Protocol):
    """What the worker needs of the sessions beyond :class:`~prepsync.server.sessions.
    SessionDatabase`'s transitions (which both implementations share)."""

    def claim_next(self) -> Session | None: ...

    def release(self, session: Session) -> None: ...

    def orphans(self) -> list[Session]: ...


class Backend(Protocol):
    """One store: SQLite in the data directory, or a PostgreSQL database."""

    name: str
    # True when several server processes may serve one session (PostgreSQL): uploads, commits
    # and cancels, and an opening for the sessions it supersedes, then also take
    # :meth:`lock_sessions`.
    several_processes: bool

    def lock_sessions(self, session_ids: Sequence[str], exclusive: bool) -> Callable[[], None]: ...

    def session_database(self) -> Any: ...  # a SessionDatabase (its own connection)

    def resource_store(self) -> ResourceStore: ...

    def review(
        self, session: Session, spec: TableSpec, path: Path, after: bytes | None
    ) -> AbstractContextManager[TableDiff]: ...

    def resources_csv(
        self, connector: str, name: str, default_header: Sequence[str]
    ) -> Iterator[bytes]: ...

    def table_counts(self) -> dict[tuple[str, str], int]: ...
