"""A store under test without HTTP: sessions opened, committed, claimed, applied and settled
through the same calls as the server's (its SessionDatabase, its worker's apply_session), on
SQLite or PostgreSQL (``database``: a URL, or None for SQLite in ``data``)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prepsync.config import TableSpec
from prepsync.server.apply import Outcome, apply_session
from prepsync.server.backends import open_backend
from prepsync.server.sessions import Session
from prepsync.server.thresholds import ConnectorLimits


class StoreHarness:
    def __init__(self, data: Path, database: str | None) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.backend = open_backend(database, data)
        self.db = self.backend.session_database()
        self.store = self.backend.resource_store()

    def close(self) -> None:
        self.store.close()
        self.db.close()

    def apply(
        self,
        connector: str,
        mode: str,
        directory: Path,
        names: Sequence[str],
        tables: Mapping[str, TableSpec],
        limits: ConnectorLimits | None = None,
        forced: bool = False,
    ) -> Outcome:
        """Open, commit, claim and apply a session carrying ``directory``'s ``names``; its
        outcome is recorded as the worker records it."""
        session = self.claimed(connector, mode, names)
        if forced:
            session = dataclasses.replace(session, forced=True)
        try:
            outcome = apply_session(
                self.store, session, tables, directory, limits, time.monotonic()
            )
            self.db.finish(session.id, outcome.state, outcome.reason, outcome.summary)
        finally:
            self.db.release(session)
        return outcome

    def queued(self, connector: str, mode: str, names: Sequence[str]) -> Session:
        """A session opened and committed (not claimed)."""
        session_id = str(uuid.uuid4())
        self.db.open(connector, "agent", mode, session_id, "client")
        files: list[dict[str, Any]] = [
            {"name": name, "size": 0, "xxh3_128": "0" * 32} for name in names
        ]
        assert self.db.commit(session_id, files)
        session: Session | None = self.db.get(session_id)
        assert session is not None
        return session

    def claimed(self, connector: str, mode: str, names: Sequence[str]) -> Session:
        session_id = self.queued(connector, mode, names).id
        session = self.db.claim_next()
        assert session is not None and session.id == session_id, session
        return session

    def resources(self, connector: str, table: str, header: Sequence[str] = ()) -> bytes:
        return b"".join(self.backend.resources_csv(connector, table, header))
