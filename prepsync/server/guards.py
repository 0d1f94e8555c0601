"""What the endpoints share: the server state and the checks every /api call starts with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from prepsync.config import Mappings, OpenIdClient, TableSpec
from prepsync.server.http import ApiError
from prepsync.server.sessions import Session, SessionDatabase, canonical_session_id
from prepsync.server.tokens import TokenSigner, bearer_token
from prepsync.server.worker import Worker

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # one upload chunk
DEFAULT_MAX_FILE_SIZE = 64 * 1024**3


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
    session_db: SessionDatabase | None = None
    worker: Worker | None = None
    # Sessions whose uploads are closed: a commit is verifying or has succeeded. Checked before
    # every write, so no byte lands in a file after its hash was taken.
    sealed: set[str] = field(default_factory=set)
    commit_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "sessions"

    def folded_tables(self, connector: str) -> dict[str, TableSpec]:
        return {spec.name.casefold(): spec for spec in self.tables.get(connector, ())}

    def running(self) -> tuple[SessionDatabase, Worker]:
        if self.session_db is None or self.worker is None:
            raise ApiError(503, "server is not running (lifespan not started)")
        return self.session_db, self.worker


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.prepsync
    return state


# ------------------------------------------------------------------------------ auth helpers


def authenticate(request: Request) -> OpenIdClient:
    state = state_of(request)
    token = bearer_token(request.headers.get("authorization"))
    client_id = None if token is None else state.signer.verify(token)
    client = None if client_id is None else state.clients.get(client_id)
    if client is None:
        message = "missing bearer token" if token is None else "invalid or expired token"
        raise ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="prepsync"'})
    return client


def connector_of(request: Request, client: OpenIdClient) -> str:
    connector: str = request.path_params["connector"]
    if connector not in state_of(request).mappings:
        raise ApiError(404, f"unknown connector {connector!r}")
    if not client.may_use(connector):
        raise ApiError(403, f"client {client.identifier!r} may not use connector {connector!r}")
    return connector


def session_of(request: Request, client: OpenIdClient) -> Session:
    """The session named in the path, for reading it or for an operator's action (force,
    cancel): any client allowed on its connector (403 otherwise); 404 when unknown."""
    db, _worker = state_of(request).running()
    session_id = canonical_session_id(request.path_params["session_id"])
    session = None if session_id is None else db.get(session_id)
    if session is None:
        raise ApiError(404, "unknown session")
    if not client.may_use(session.connector):
        raise ApiError(
            403, f"client {client.identifier!r} may not use connector {session.connector!r}"
        )
    return session


def owned_session_of(request: Request, client: OpenIdClient) -> Session:
    """The session named in the path, for its files and its commit: only the client that
    opened it. Another client gets the 404 of an unknown session, so it learns nothing about
    sessions it cannot write (a client not allowed on the connector still gets 403)."""
    session = session_of(request, client)
    if session.client is not None and session.client != client.identifier:
        raise ApiError(404, "unknown session")
    return session


def conflict(session: Session, message: str) -> ApiError:
    return ApiError(409, message, extra={"state": session.state})


# ------------------------------------------------------------------------------ endpoints
