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
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread
import psycopg
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
from prepsync.errors import ConfigError, PrepsyncError
from prepsync.logs import configure as configure_logging
from prepsync.private import make_dirs
from prepsync.server.backends import open_backend
from prepsync.server.changes import changes
from prepsync.server.clients import OpenIdClient, load_clients
from prepsync.server.connections import (
    RESERVED_DESCRIPTORS,
    bounded_protocol,
    connection_cap,
    raise_descriptor_limit,
)
from prepsync.server.context import ServerState
from prepsync.server.defaults import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_OPERATOR_PROFILE,
    DEFAULT_PORT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT,
    DEFAULT_TIMEOUT_KEEP_ALIVE,
    DEFAULT_TOKEN_TTL,
)
from prepsync.server.disk import DiskReserve, disk_full_handler
from prepsync.server.endpoints import (
    cancel,
    force,
    get_session,
    health,
    list_sessions,
    mappings,
    metrics,
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
from prepsync.server.thresholds import connector_limits
from prepsync.server.tokens import TokenSigner, load_or_create_key
from prepsync.server.uploads import commit, file_status, upload
from prepsync.server.worker import Worker

logger = logging.getLogger(__name__)

ROUTES = [
    Route("/", status_page, methods=["GET"]),
    Route("/healthz", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
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
    session_timeout: float = DEFAULT_SESSION_TIMEOUT,
    max_body: int = DEFAULT_MAX_BODY,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    token_ttl: int = DEFAULT_TOKEN_TTL,
    worker_poll: float = 1.0,
    database: str | None = None,
    operator_profile: str = DEFAULT_OPERATOR_PROFILE,
) -> Starlette:
    """The server as an ASGI app; the worker runs while the app's lifespan does.

    ``database``: a ``postgresql://`` URL for the PostgreSQL store; None for SQLite files in
    the data directory. Raises ConfigError for an unusable configuration, data directory or
    database.
    """
    if session_timeout <= 0 or max_body <= 0 or max_file_size <= 0 or token_ttl <= 0:
        raise ValueError("session_timeout, max_body, max_file_size and token_ttl must be > 0")
    if not operator_profile.strip():
        raise ConfigError("the operator profile is empty")
    clients, all_mappings, tables = _load_configuration(config_path)
    if not any(client.profile == operator_profile for client in clients.values()):
        logger.warning(
            "no OpenIdClient has Profile=%r: no client can force, cancel or review sessions",
            operator_profile,
        )
    data = Path(data_dir)
    try:
        make_dirs(data)  # 0700, its missing parents too; an existing one keeps its mode
        (data / "sessions").mkdir(mode=0o700, exist_ok=True)
        key = load_or_create_key(data)
    except (OSError, ValueError) as error:
        raise ConfigError(f"data directory {data}: {error}") from None
    reserve = DiskReserve(data)
    backend = open_backend(database, data)
    check_tables = getattr(backend, "check_tables", None)
    if check_tables is not None:
        check_tables(tables)
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
        backend=backend,
        reserve=reserve,
        operator_profile=operator_profile,
    )

    def session_counts() -> dict[tuple[str, str], int]:
        return state.session_db.state_counts() if state.session_db is not None else {}

    state.events.watch_sessions(session_counts)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        worker = Worker(
            backend,
            state.sessions_dir,
            {connector: state.folded_tables(connector) for connector in tables},
            session_timeout,
            state.worker_poll,
            {connector: connector_limits(all_mappings[connector]) for connector in tables},
            reserve=reserve,
            events=state.events,
        )
        state.session_db = backend.session_database()
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
            psycopg.Error: disk_full_handler,  # the PostgreSQL store's disk_full (53100)
            Exception: server_error_handler,
        },
    )
    app.state.prepsync = state
    return app


class ListenError(PrepsyncError):
    """The server cannot listen on the address it was given."""


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket bound to ``host:port`` and listening; ListenError in one line otherwise.

    Bound here, before uvicorn starts, so that a port in use is one line and an exit status of
    our own rather than uvicorn's log and its status 3 (which is ``prepare``'s "blocked").
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as error:
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def serve(
    config_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    session_timeout: float = DEFAULT_SESSION_TIMEOUT,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    token_ttl: int = DEFAULT_TOKEN_TTL,
    log_level: str = "info",
    database: str | None = None,
    log_format: str = "text",
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
    forwarded_allow_ips: str | None = None,
    timeout_keep_alive: float = DEFAULT_TIMEOUT_KEEP_ALIVE,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    operator_profile: str = DEFAULT_OPERATOR_PROFILE,
) -> None:
    """Run the server with uvicorn until interrupted (``prepsync serve``).

    Raises ConfigError for an unusable configuration, data directory or certificate, and
    ListenError when the address cannot be listened on.
    """
    import uvicorn  # here: only serving needs it

    level = getattr(logging, log_level.upper())
    # prepsync's records (session transitions) and uvicorn's (start-up, errors, access) go to
    # stderr in one format.
    configure_logging(level, log_format, ("prepsync", "uvicorn", "uvicorn.error"))
    configure_logging(
        level if level <= logging.INFO else logging.WARNING, log_format, ("uvicorn.access",)
    )
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
    if ssl_certfile is not None and ssl_keyfile is not None:
        import ssl

        try:  # checked here: uvicorn would print a traceback
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                ssl_certfile, ssl_keyfile
            )
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"cannot use {ssl_certfile} with {ssl_keyfile}: {error.strerror or error}"
            ) from None
    if read_timeout <= 0 or timeout_keep_alive <= 0 or max_connections <= 0:
        raise ValueError("read_timeout, timeout_keep_alive and max_connections must be > 0")
    app = create_app(
        config_path,
        data_dir,
        session_timeout=session_timeout,
        max_body=max_body,
        max_file_size=max_file_size,
        token_ttl=token_ttl,
        database=database,
        operator_profile=operator_profile,
    )
    cap = connection_cap(max_connections, raise_descriptor_limit())
    if cap < max_connections:
        logger.warning(
            "at most %d connections (not %d): the process may open only %d files",
            cap,
            max_connections,
            cap + RESERVED_DESCRIPTORS,
        )
    listener = listening_socket(host, port)
    # uvicorn says where it listens only for sockets it binds itself.
    bound = listener.getsockname()
    logger.info(
        "listening on %s://%s:%d (store: %s)",
        "https" if ssl_certfile else "http",
        f"[{bound[0]}]" if ":" in bound[0] else bound[0],
        bound[1],
        app.state.prepsync.backend.name,
    )
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=level,
        http=bounded_protocol(read_timeout, cap),
        timeout_keep_alive=timeout_keep_alive,  # type: ignore[arg-type]
        timeout_graceful_shutdown=10,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        # Behind a reverse proxy: trust its X-Forwarded-For/-Proto from these addresses only,
        # so that the status page's commands and the log name the agents' real addresses.
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[listener])
    except SystemExit:
        # uvicorn exits when the application's start-up failed, after logging why.
        if server.started:
            raise
        raise PrepsyncError("the server did not start (the reason is logged above)") from None
    finally:
        listener.close()
