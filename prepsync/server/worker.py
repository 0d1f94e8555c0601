"""The one background worker: processes committed sessions one at a time, in opening order.

A daemon thread (SQLite work is blocking, so it stays off the event loop) with its own
connections. Each round it (1) cancels open sessions idle for ``session_timeout`` seconds,
(2) claims the next queued head (:meth:`SessionDatabase.claim_next`) and applies it. It sleeps until
woken (commit, force, cancel) or ``poll`` seconds pass, whichever is first.

Crash safety: a session is marked ``processing`` before it is applied, and the store records
it as ``applied`` in the same transaction as its rows. At startup, a ``processing`` session
the store has applied is marked done; any other one is queued again and processed from the
start (its rolled-back transaction left the store as before).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prepsync.config import TableSpec
from prepsync.protocol import BLOCKED, DONE, FAILED, INCREMENTAL, OPEN, PROCESSING, QUEUED
from prepsync.server.apply import apply_session
from prepsync.server.disk import DiskReserve, is_disk_full, reclaiming
from prepsync.server.events import SessionEvents
from prepsync.server.session_files import discard_files
from prepsync.server.sessions import Session
from prepsync.server.storeapi import Backend
from prepsync.server.thresholds import ConnectorLimits

logger = logging.getLogger(__name__)

STORE_RETRY_DELAY = 10.0  # seconds before a session is tried again after a store error


class Worker:
    def __init__(
        self,
        backend: Backend,
        sessions_dir: Path,
        tables: Mapping[str, Mapping[str, TableSpec]],
        session_timeout: float,
        poll: float,
        limits: Mapping[str, ConnectorLimits] | None = None,
        reserve: DiskReserve | None = None,
        events: SessionEvents | None = None,
    ) -> None:
        self._events = events or SessionEvents()
        self._sessions_dir = sessions_dir
        self._tables = tables  # connector -> casefolded table -> spec
        self._limits = limits or {}  # connector -> thresholds (entity level only when absent)
        self._session_timeout = session_timeout
        self._poll = poll
        self._reserve = reserve
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._store = backend.resource_store()
        self._db = backend.session_database()
        self._recover_when_room()

    def recover(self) -> None:
        """Settle the sessions a crash (or a stop) left ``processing``; see the module doc."""
        for session in self._db.orphans():
            try:
                if self._store.was_applied(session.id):
                    summary = self._store.applied_summary(session.id)
                    self._db.finish(session.id, DONE, None, summary)
                    discard_files(self._sessions_dir, session.id)
                    self._events.recovered(session, DONE, "it was applied before the restart")
                else:
                    self._db.set_state(session.id, PROCESSING, QUEUED)
                    self._events.recovered(
                        session, QUEUED, "its apply was interrupted: it is applied again"
                    )
            finally:
                self._db.release(session)

    def _recover_when_room(self) -> None:
        """recover(), put off while the disk is full: a restart on a full disk must still
        serve (cancellations and the idle timeout are what free it), and the next round
        settles the interrupted sessions once there is room."""
        try:
            self.recover()
        except Exception as error:
            if not is_disk_full(error):
                raise
            logger.warning("interrupted sessions wait for room on the disk: %s", error)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prepsync-worker", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The worker thread runs (false before start and after a stop)."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop soon; an apply cut short rolls back and is queued again at the next start."""
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        thread = self._thread
        # interrupt() only stops the statement running at that instant: repeat until it ends.
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            self._store.interrupt()
            thread.join(0.05)
        if thread is None or not thread.is_alive():
            self._store.close()
            self._db.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the round, not after the wait: a wake() during the round then
            # starts the next one at once instead of being lost until the next poll.
            self._wake.clear()
            try:
                worked = self.step()
            except Exception:  # keep serving: log, and try again after a pause
                logger.exception("worker round failed")
                worked = False
            if not worked:
                self._wake.wait(self._poll)

    def step(self) -> bool:
        """One round; True when a session was processed (so look for another at once)."""
        # Only this thread sets "processing", and not across rounds: one seen now is stale (a
        # crash, or a failed state update), and would hold its connector's queue forever.
        self._recover_when_room()
        if self._reserve is not None:
            self._reserve.ensure()
        idle_before = time.time() - self._session_timeout
        reason = f"abandoned: no activity for {self._session_timeout:g} s"
        abandoned = reclaiming(
            lambda: self._db.abandon_idle(idle_before, reason),
            self._reserve,
            lambda: self._discard_idle(idle_before),
        )
        for session_id in abandoned:
            self._events.cancelled(
                session_id, None, f"the server: no upload for {self._session_timeout:g} s"
            )
            discard_files(self._sessions_dir, session_id)
        if self._stopping.is_set():
            return False
        session = self._db.claim_next()
        if session is None:
            return False
        try:
            self._process(session)
        finally:
            self._db.release(session)
        # After the verdict is recorded, so the agent waiting for it does not wait for this.
        try:
            self._store.after_session()
        except self._store.store_errors as error:  # the next round's checkpoint catches up
            logger.warning("store checkpoint failed: %s", error)
        return True

    def _discard_idle(self, idle_before: float) -> None:
        """On a full disk, the files of the sessions about to be abandoned go first (see
        disk.py): an idle open session's files are read by no one."""
        for session in self._db.unfinished():
            if session.state == OPEN and session.active_at < idle_before:
                discard_files(self._sessions_dir, session.id)

    def _process(self, session: Session) -> None:
        logger.info("processing %s session %s of %s", session.mode, session.id, session.connector)
        if session.mode == INCREMENTAL:
            earlier = self._db.unapplied_before(session)
            if earlier is not None:
                self._finish(
                    session,
                    FAILED,
                    f"earlier {earlier.mode} session {earlier.id} was {earlier.state}, so its "
                    "changes are not in the store and this delta cannot be applied on top of "
                    "them; run a complete synchronization",
                )
                return
        started = time.monotonic()
        try:
            outcome = apply_session(
                self._store,
                session,
                self._tables.get(session.connector),
                self._sessions_dir / session.id,
                self._limits.get(session.connector),
                started,
            )
        except self._store.store_errors as error:
            if self._stopping.is_set():
                # Interrupted by stop(): leave it processing; recover() queues it again.
                logger.info("session %s interrupted by shutdown", session.id)
                return
            # Disk full, I/O error, lock timeout: the session is fine, the store is not. Failing
            # it would lose its changes (the agent has moved on), so queue it again and pause.
            logger.error(
                "session %s: store error, retrying in %g s: %s",
                session.id,
                STORE_RETRY_DELAY,
                error,
            )
            self._db.set_state(session.id, PROCESSING, QUEUED)
            self._stopping.wait(STORE_RETRY_DELAY)
            return
        except Exception as error:  # a bug must not wedge the queue: fail this one, go on
            logger.exception("session %s", session.id)
            self._finish(session, FAILED, f"internal error: {type(error).__name__}: {error}")
            return
        # The store's share of the session's time, for the agent's report: from the claim to
        # the outcome (a blocked session's diff included), not counting the verdict's write.
        outcome.summary["apply_seconds"] = round(time.monotonic() - started, 3)
        self._finish(session, outcome.state, outcome.reason, outcome.summary)

    def _finish(
        self,
        session: Session,
        state: str,
        reason: str | None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        self._db.finish(session.id, state, reason, summary)
        self._events.finished(session, state, reason, summary)
        if state != BLOCKED:  # a blocked session's files wait for force
            discard_files(self._sessions_dir, session.id)
