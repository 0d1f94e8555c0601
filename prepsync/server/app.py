"""The reference server (REFERENCE §7): a Starlette app and a uvicorn runner.

Data directory layout (created on first start)::

    <data>/token.key            token signing key (0600)
    <data>/sessions.sqlite3     sessions and their states (sessions.py)
    <data>/store.sqlite3        stored rows (store.py)
    <data>/disk-reserve         1 MiB kept so that a full disk can still be freed (disk.py)
    <data>/sessions/<GUID>/     each session's uploads, removed once it is final (done,
                                failed, cancelled)

The configuration (clients and mappings) is read once, by :func:`create_app`: a bad one fails
at start, and a change needs a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from prepsync.config import (
    Mappings,
    TableSpec,
    connectors_in,
    load_mappings,
    resolve_tables,
)
from prepsync.errors import ConfigError
from prepsync.server.changes import changes
from prepsync.server.clients import OpenIdClient, load_clients
from prepsync.server.context import DEFAULT_MAX_BODY, DEFAULT_MAX_FILE_SIZE, ServerState
from prepsync.server.disk import DiskReserve, disk_full_handler
from prepsync.server.endpoints import (
    cancel,
    force,
    get_session,
    list_sessions,
    mappings,
    open_session,
    resources,
    status_page,
    token,
)
from prepsync.server.http import (
    ApiError,
    api_error_handler,
    http_error_handler,
    server_error_handler,
)
from prepsync.server.sessions import SessionDatabase
from prepsync.server.thresholds import connector_limits
from prepsync.server.tokens import TokenSigner, load_or_create_key
from prepsync.server.uploads import commit, file_status, upload
from prepsync.server.worker import Worker

logger = logging.getLogger(__name__)

ROUTES = [
    Route("/", status_page, methods=["GET"]),
    Route("/connect/token", token, methods=["POST"]),
    Route("/api/connectors/{connector}/mappings", mappings, methods=["GET"]),
    Route("/api/connectors/{connector}/sessions", open_session, methods=["POST"]),
    Route("/api/connectors/{connector}/sessions", list_sessions, methods=["GET"]),
    Route("/api/connectors/{connector}/tables/{table}/resources", resources, methods=["GET"]),
    Route("/api/sessions/{session_id}", get_session, methods=["GET"]),
    # {name:path} so that a decoded "%2F" or ".." reaches the name check (400), not a 404.
    Route("/api/sessions/{session_id}/files/{name:path}", upload, methods=["PUT"]),
    Route("/api/sessions/{session_id}/files/{name:path}", file_status, methods=["GET"]),
    Route("/api/sessions/{session_id}/changes", changes, methods=["GET"]),
    Route("/api/sessions/{session_id}/commit", commit, methods=["POST"]),
    Route("/api/sessions/{session_id}/force", force, methods=["POST"]),
    Route("/api/sessions/{session_id}/cancel", cancel, methods=["POST"]),
]


def _load_configuration(
    config_path: str | os.PathLike[str],
) -> tuple[dict[str, OpenIdClient], dict[str, Mappings], dict[str, tuple[TableSpec, ...]]]:
    clients = load_clients(config_path)
    if not clients:
        logger.warning("%s has no OpenIdClient: no agent can authenticate", config_path)
    all_mappings: dict[str, Mappings] = {}
    tables: dict[str, tuple[TableSpec, ...]] = {}
    for connector in sorted(connectors_in(config_path)):
        all_mappings[connector] = load_mappings(config_path, connector)
        tables[connector] = resolve_tables(all_mappings[connector], os.fspath(config_path))
        if all_mappings[connector].connector_thresholds is None:
            logger.info(
                "connector %s has no <Connector> element: no connector-level thresholds",
                connector,
            )
    return clients, all_mappings, tables


def create_app(
    config_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    session_timeout: float = 3600,
    max_body: int = DEFAULT_MAX_BODY,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    token_ttl: int = 3600,
    worker_poll: float = 1.0,
) -> Starlette:
    """The server as an ASGI app; the worker runs while the app's lifespan does.

    Raises ConfigError for an unusable configuration or data directory.
    """
    if session_timeout <= 0 or max_body <= 0 or max_file_size <= 0 or token_ttl <= 0:
        raise ValueError("session_timeout, max_body, max_file_size and token_ttl must be > 0")
    clients, all_mappings, tables = _load_configuration(config_path)
    data = Path(data_dir)
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        (data / "sessions").mkdir(mode=0o700, exist_ok=True)
        key = load_or_create_key(data)
    except (OSError, ValueError) as error:
        raise ConfigError(f"data directory {data}: {error}") from None
    reserve = DiskReserve(data)
    state = ServerState(
        data_dir=data,
        clients=clients,
        mappings=all_mappings,
        tables=tables,
        signer=TokenSigner(key),
        session_timeout=session_timeout,
        max_body=max_body,
        max_file_size=max_file_size,
        token_ttl=token_ttl,
        # Abandonment is checked each poll: a small timeout (tests) needs a quicker poll.
        worker_poll=min(worker_poll, max(session_timeout / 4, 0.05)),
        reserve=reserve,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        worker = Worker(
            data / "sessions.sqlite3",
            data / "store.sqlite3",
            state.sessions_dir,
            {connector: state.folded_tables(connector) for connector in tables},
            session_timeout,
            state.worker_poll,
            {connector: connector_limits(all_mappings[connector]) for connector in tables},
            reserve=reserve,
        )
        state.session_db = SessionDatabase(data / "sessions.sqlite3")
        state.worker = worker
        reserve.ensure()  # before the first request: the worker only makes it again
        worker.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(worker.stop)
            state.session_db.close()
            state.session_db = state.worker = None

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            # A full disk is a 507 (disk.py); other errors of these kinds go on to the 500.
            OSError: disk_full_handler,
            sqlite3.Error: disk_full_handler,
            Exception: server_error_handler,
        },
    )
    app.state.prepsync = state
    return app


def serve(
    config_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 5000,
    session_timeout: float = 3600,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    token_ttl: int = 3600,
    log_level: str = "info",
) -> None:
    """Run the server with uvicorn until interrupted (``prepsync serve``)."""
    import uvicorn  # here: only serving needs it

    app = create_app(
        config_path,
        data_dir,
        session_timeout=session_timeout,
        max_body=max_body,
        max_file_size=max_file_size,
        token_ttl=token_ttl,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
