"""What every endpoint shares: the configuration read at start, limits, and the running parts.

One :class:`ServerState` per app, reached from a request with :func:`state_of`; the sessions
database and the worker exist while the app's lifespan runs (:func:`ServerState.running`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
from starlette.requests import Request

from prepsync.config import Mappings, TableSpec
from prepsync.server.clients import OpenIdClient
from prepsync.server.defaults import DEFAULT_OPERATOR_PROFILE
from prepsync.server.disk import DiskReserve
from prepsync.server.events import SessionEvents
from prepsync.server.http import ApiError
from prepsync.server.sessions import SessionDatabase
from prepsync.server.storeapi import Backend
from prepsync.server.tokens import TokenSigner
from prepsync.server.worker import Worker


@dataclass
class ServerState:
    """Everything the endpoints share; ``session_db`` and ``worker`` exist while the app runs."""

    data_dir: Path
    clients: dict[str, OpenIdClient]
    mappings: dict[str, Mappings]
    tables: dict[str, tuple[TableSpec, ...]]
    signer: TokenSigner
    session_timeout: float
    max_body: int
    max_file_size: int
    token_ttl: int
    worker_poll: float
    backend: Backend
    session_db: SessionDatabase | None = None
    worker: Worker | None = None
    # Sessions whose uploads are closed: a commit is verifying or has succeeded. Checked before
    # every write, so no byte lands in a file after its hash was taken.
    sealed: set[str] = field(default_factory=set)
    # The transition log and the metrics (GET /metrics).
    events: SessionEvents = field(default_factory=SessionEvents)
    commit_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # Room kept in the data directory for the writes that free it (see disk.py).
    reserve: DiskReserve | None = None
    # The Profile of the clients that review and settle sessions (see guards.py).
    operator_profile: str = DEFAULT_OPERATOR_PROFILE

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "sessions"

    def hashed_secret_of(self, client_id: str) -> str | None:
        """The client's ``HashedSecret`` now; a token issued for another one is void."""
        client = self.clients.get(client_id)
        return None if client is None else client.hashed_secret

    def folded_tables(self, connector: str) -> dict[str, TableSpec]:
        return {spec.name.casefold(): spec for spec in self.tables.get(connector, ())}

    def session_held(self, session_id: str, exclusive: bool) -> AbstractAsyncContextManager[None]:
        """Hold the session against the other server processes of a shared database (uploads
        shared; a commit or a cancel exclusive); nothing with one process per data directory,
        where ``sealed`` and ``commit_locks`` suffice."""
        return self.sessions_held([session_id], exclusive)

    @asynccontextmanager
    async def sessions_held(
        self, session_ids: Sequence[str], exclusive: bool
    ) -> AsyncIterator[None]:
        """:meth:`session_held` for several sessions at once (an opening holds those it
        supersedes). Waited for in a thread: an upload of this process holding one shared goes
        on streaming meanwhile."""
        if not self.backend.several_processes or not session_ids:
            yield
            return
        release = await anyio.to_thread.run_sync(self.backend.lock_sessions, session_ids, exclusive)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(release)

    def running(self) -> tuple[SessionDatabase, Worker]:
        if self.session_db is None or self.worker is None:
            raise ApiError(503, "server is not running (lifespan not started)")
        return self.session_db, self.worker


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.prepsync
    return state
