"""The reference server of SPEC §7: a Starlette app and a uvicorn runner.

Data directory layout (created on first start)::

    <data>/token.key            token signing key (0600)
    <data>/sessions.sqlite3     sessions and their states (control.py)
    <data>/store.sqlite3        stored rows (store.py)
    <data>/sessions/<GUID>/     each session's uploads, removed once done or cancelled

The configuration (clients and mappings) is read once, by :func:`create_app`: a bad one fails
at start, and a change needs a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from prepsync.config import (
    Mappings,
    OpenIdClient,
    TableSpec,
    connectors_in,
    load_clients,
    load_mappings,
    resolve_tables,
)
from prepsync.errors import ConfigError
from prepsync.server.auth import TokenSigner, basic_credentials, bearer_token, load_or_create_key
from prepsync.server.control import (
    CANCELLED,
    MODES,
    OPEN,
    Control,
    Session,
    canonical_session_id,
)
from prepsync.server.http import (
    ApiError,
    api_error_handler,
    check_declared_length,
    error_response,
    http_error_handler,
    read_body,
    read_json_object,
    server_error_handler,
)
from prepsync.server.status import RECENT_SESSIONS, render_status
from prepsync.server.store import iter_table_csv, table_counts
from prepsync.server.uploads import (
    file_name_problem,
    file_size,
    hash_and_sync,
    open_for_write,
    parse_content_range,
    table_of_file,
)
from prepsync.server.worker import Worker, discard_files

logger = logging.getLogger(__name__)

SCOPE = "usercube_api"
FORM_LIMIT = 64 * 1024
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # one upload chunk
DEFAULT_MAX_FILE_SIZE = 64 * 1024**3
AGENT_MAX = 256
LIST_DEFAULT, LIST_MAX = 100, 10_000
_HEX = frozenset("0123456789abcdef")
# Stands in for an unknown client id; its hash is of no secret (32 zero bytes, base64).
_NO_CLIENT = OpenIdClient("", "A" * 43 + "=", None)


@dataclass
class ServerState:
    """Everything the endpoints share; ``control`` and ``worker`` exist while the app runs."""

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
    control: Control | None = None
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

    def running(self) -> tuple[Control, Worker]:
        if self.control is None or self.worker is None:
            raise ApiError(503, "server is not running (lifespan not started)")
        return self.control, self.worker


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.prepsync
    return state


# ------------------------------------------------------------------------------ auth helpers


def _authenticate(request: Request) -> OpenIdClient:
    state = _state(request)
    token = bearer_token(request.headers.get("authorization"))
    client_id = None if token is None else state.signer.verify(token)
    client = None if client_id is None else state.clients.get(client_id)
    if client is None:
        message = "missing bearer token" if token is None else "invalid or expired token"
        raise ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="prepsync"'})
    return client


def _connector(request: Request, client: OpenIdClient) -> str:
    connector: str = request.path_params["connector"]
    if connector not in _state(request).mappings:
        raise ApiError(404, f"unknown connector {connector!r}")
    if not client.may_use(connector):
        raise ApiError(403, f"client {client.identifier!r} may not use connector {connector!r}")
    return connector


def _session(request: Request, client: OpenIdClient) -> Session:
    control, _worker = _state(request).running()
    session_id = canonical_session_id(request.path_params["session_id"])
    session = None if session_id is None else control.get(session_id)
    if session is None:
        raise ApiError(404, "unknown session")
    if not client.may_use(session.connector):
        raise ApiError(
            403, f"client {client.identifier!r} may not use connector {session.connector!r}"
        )
    return session


def _conflict(session: Session, message: str) -> ApiError:
    return ApiError(409, message, extra={"state": session.state})


# ------------------------------------------------------------------------------ endpoints


async def token(request: Request) -> Response:
    """POST /connect/token: OAuth 2 client credentials (RFC 6749 §4.4)."""
    state = _state(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "expected a form-urlencoded body")
    body = await read_body(request, FORM_LIMIT)
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return _oauth_error(400, "invalid_request", "form is not UTF-8")
    if any(len(values) > 1 for values in form.values()):
        return _oauth_error(400, "invalid_request", "a parameter is repeated")
    fields = {name: values[0] for name, values in form.items()}
    if fields.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
    if SCOPE not in fields.get("scope", "").split():
        return _oauth_error(400, "invalid_scope", f"scope must include {SCOPE}")
    credentials = basic_credentials(request.headers.get("authorization"))
    if credentials is None:
        credentials = (fields.get("client_id", ""), fields.get("client_secret", ""))
    client = state.clients.get(credentials[0])
    # The secret is checked for unknown clients too (against a dummy), so response times do
    # not reveal which client ids exist.
    if not (client or _NO_CLIENT).check_secret(credentials[1]) or client is None:
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
    return JSONResponse(
        {
            "access_token": state.signer.issue(client.identifier, state.token_ttl),
            "token_type": "Bearer",
            "expires_in": state.token_ttl,
            "scope": SCOPE,
        },
        headers={"Cache-Control": "no-store"},
    )


def _oauth_error(status: int, code: str, description: str) -> Response:
    return error_response(status, code, {"error_description": description})


async def mappings(request: Request) -> Response:
    client = _authenticate(request)
    connector = _connector(request, client)
    return JSONResponse(_state(request).mappings[connector].to_json())


async def open_session(request: Request) -> Response:
    """POST /api/connectors/{c}/sessions {"agent", "mode"} -> 201 {"id", ...}."""
    client = _authenticate(request)
    connector = _connector(request, client)
    state = _state(request)
    control, worker = state.running()
    document = await read_json_object(request)
    agent, mode = document.get("agent"), document.get("mode")
    if not isinstance(agent, str) or not agent or len(agent) > AGENT_MAX:
        raise ApiError(400, f"'agent' must be a non-empty string of at most {AGENT_MAX} characters")
    if not isinstance(mode, str) or mode.lower() not in MODES:
        raise ApiError(400, f"'mode' must be one of {', '.join(MODES)}")
    session_id = str(uuid.uuid4())
    # Directory first: a recorded session always has its directory.
    (state.sessions_dir / session_id).mkdir(mode=0o700)
    try:
        cancelled = control.open(connector, agent, mode.lower(), session_id)
    except BaseException:
        discard_files(state.sessions_dir, session_id)
        raise
    for other in cancelled:
        state.sealed.add(other)
        discard_files(state.sessions_dir, other)
    worker.wake()
    session = control.get(session_id)
    assert session is not None
    return JSONResponse(
        session.to_json(),
        status_code=201,
        headers={"Location": f"/api/sessions/{session_id}"},
    )


async def list_sessions(request: Request) -> Response:
    client = _authenticate(request)
    connector = _connector(request, client)
    control, _worker = _state(request).running()
    limit_text = request.query_params.get("limit", str(LIST_DEFAULT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= LIST_MAX:
        raise ApiError(400, f"'limit' must be an integer from 1 to {LIST_MAX}")
    sessions = control.recent(connector, int(limit_text))
    return JSONResponse([session.to_json() for session in sessions])


async def get_session(request: Request) -> Response:
    client = _authenticate(request)
    return JSONResponse(_session(request, client).to_json())


def _upload_path(request: Request, session: Session) -> tuple[str, Path]:
    """The checked file name and its path inside the session's directory (400 if unfit)."""
    name: str = request.path_params["name"]
    state = _state(request)
    if request.method == "PUT":
        _spec, problem = table_of_file(name, session.mode, state.folded_tables(session.connector))
    else:
        problem = file_name_problem(name)
    if problem is not None:
        raise ApiError(400, problem)
    return name, state.sessions_dir / session.id / name


async def file_status(request: Request) -> Response:
    """GET /api/sessions/{id}/files/{name} -> {"name", "size"}: bytes arrived so far."""
    client = _authenticate(request)
    session = _session(request, client)
    control, _worker = _state(request).running()
    name, path = _upload_path(request, session)
    size = file_size(path)
    if size is None:
        raise ApiError(404, f"no file {name!r} in this session")
    control.touch(session.id)
    return JSONResponse({"name": name, "size": size})


async def upload(request: Request) -> Response:
    """PUT /api/sessions/{id}/files/{name} with ``Content-Range: bytes a-b/total``.

    The body is written at offset a, streamed (never held whole). Writing the same chunk again
    is harmless; a chunk starting past the bytes arrived (a gap) is refused with 416 and the
    current size. Without Content-Range the body is the whole file.
    """
    client = _authenticate(request)
    session = _session(request, client)
    state = _state(request)
    control, _worker = state.running()
    if session.state != OPEN or session.id in state.sealed:
        raise _conflict(session, f"session is {session.state}: uploads are closed")
    name, path = _upload_path(request, session)
    check_declared_length(request, state.max_body)
    header = request.headers.get("content-range")
    whole_file = header is None
    if header is None:
        start, length = 0, None
    else:
        content_range = parse_content_range(header)
        if content_range is None:
            raise ApiError(400, "Content-Range must be 'bytes first-last/total' (total or *)")
        start, length = content_range.start, content_range.length
        total = content_range.total if content_range.total is not None else content_range.end + 1
        if total > state.max_file_size:
            raise ApiError(413, f"file larger than {state.max_file_size} bytes")
        if length > state.max_body:
            raise ApiError(413, f"chunk larger than {state.max_body} bytes")
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) != length:
            raise ApiError(400, "Content-Length differs from the Content-Range")
    current = file_size(path) or 0
    if start > current:
        raise ApiError(
            416,
            f"chunk starts at byte {start} but only {current} bytes arrived",
            extra={"name": name, "size": current},
            headers={"Content-Range": f"bytes */{current}"},
        )
    written = await _write_body(request, state, session, path, start, length, whole_file)
    control.touch(session.id)
    if length is not None and written != length:
        raise ApiError(400, f"body has {written} bytes, Content-Range says {length}")
    return JSONResponse({"name": name, "size": file_size(path) or 0})


async def _write_body(
    request: Request,
    state: ServerState,
    session: Session,
    path: Path,
    start: int,
    length: int | None,
    whole_file: bool,
) -> int:
    """Stream the body into ``path`` at ``start``; returns the bytes written.

    pwrite on the event loop thread, piece by piece (pieces are small): together with the
    seal check before each piece this is atomic with respect to a commit on the same loop.
    """
    limit = length if length is not None else state.max_body
    descriptor = open_for_write(path)
    written = 0
    try:
        async for piece in request.stream():
            if not piece:
                continue
            if session.id in state.sealed:
                raise _conflict(session, "session was committed or cancelled during the upload")
            if written + len(piece) > limit:
                if length is None:
                    raise ApiError(413, f"request body larger than {limit} bytes")
                raise ApiError(400, f"body is longer than the Content-Range's {length} bytes")
            view = memoryview(piece)
            while view:
                count = os.pwrite(descriptor, view, start + written)
                view = view[count:]
                written += count
        if whole_file:
            os.ftruncate(descriptor, written)
    except ClientDisconnect:
        pass  # what arrived is kept: the agent asks for the size and resumes from there
    finally:
        os.close(descriptor)
    return written


def _commit_entries(document: dict[str, Any]) -> list[dict[str, Any]]:
    files = document.get("files")
    if not isinstance(files, list):
        raise ApiError(400, "'files' must be an array")
    entries: list[dict[str, Any]] = []
    for index, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise ApiError(400, f"files[{index}] must be an object")
        name, size, digest = entry.get("name"), entry.get("size"), entry.get("xxh3_128")
        if not isinstance(name, str):
            raise ApiError(400, f"files[{index}].name must be a string")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ApiError(400, f"files[{index}].size must be a non-negative integer")
        if not isinstance(digest, str) or len(digest) != 32 or not set(digest.lower()) <= _HEX:
            raise ApiError(400, f"files[{index}].xxh3_128 must be 32 hexadecimal digits")
        entries.append({"name": name, "size": size, "xxh3_128": digest.lower()})
    return entries


async def commit(request: Request) -> Response:
    """POST /api/sessions/{id}/commit: verify every listed file, then queue (202).

    A repeated commit answers 200 with the current state; a session cancelled before it was
    committed answers 409. Files uploaded but not listed are ignored.
    """
    client = _authenticate(request)
    session = _session(request, client)
    state = _state(request)
    control, worker = state.running()
    entries = _commit_entries(await read_json_object(request))
    lock = state.commit_locks.setdefault(session.id, asyncio.Lock())
    async with lock:
        current = control.get(session.id)
        assert current is not None
        if current.state != OPEN:
            if current.files is None:  # never committed: cancelled (or abandoned) first
                raise _conflict(current, f"session is {current.state}")
            return JSONResponse(current.to_json())
        tables = state.folded_tables(session.connector)
        seen: set[str] = set()
        for entry in entries:
            spec, problem = table_of_file(entry["name"], session.mode, tables)
            if spec is None:
                raise ApiError(422, f"{entry['name']}: {problem}", extra={"file": entry["name"]})
            if spec.name.casefold() in seen:
                raise ApiError(
                    422,
                    f"{entry['name']}: table {spec.name} listed twice",
                    extra={"file": entry["name"]},
                )
            seen.add(spec.name.casefold())
        state.sealed.add(session.id)
        try:
            await anyio.to_thread.run_sync(_verify, state.sessions_dir / session.id, entries)
        except BaseException:
            state.sealed.discard(session.id)
            raise
        if not control.commit(session.id, entries):
            # Cancelled while we verified (a complete session opened): say so.
            current = control.get(session.id)
            assert current is not None
            raise _conflict(current, f"session is {current.state}")
        state.commit_locks.pop(session.id, None)
    worker.wake()
    committed = control.get(session.id)
    assert committed is not None
    return JSONResponse(committed.to_json(), status_code=202)


def _verify(directory: Path, entries: list[dict[str, Any]]) -> None:
    """Size and xxh3-128 of each listed file (422 naming the first that differs); durable."""
    for entry in entries:
        name = entry["name"]
        path = directory / name
        if file_size(path) is None:
            raise ApiError(422, f"{name}: not uploaded", extra={"file": name})
        size, digest = hash_and_sync(path)
        if size != entry["size"]:
            raise ApiError(
                422,
                f"{name}: {size} bytes arrived, commit says {entry['size']}",
                extra={"file": name, "size": size},
            )
        if digest != entry["xxh3_128"]:
            raise ApiError(
                422,
                f"{name}: xxh3_128 differs (server has {digest})",
                extra={"file": name, "xxh3_128": digest},
            )
    # The directory entries too, so the files are there after a power cut.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def force(request: Request) -> Response:
    """POST /api/sessions/{id}/force: a blocked session is queued again, thresholds off."""
    client = _authenticate(request)
    session = _session(request, client)
    control, worker = _state(request).running()
    if not control.force(session.id):
        raise _conflict(session, f"only a blocked session can be forced; it is {session.state}")
    worker.wake()
    forced = control.get(session.id)
    assert forced is not None
    return JSONResponse(forced.to_json(), status_code=202)


async def cancel(request: Request) -> Response:
    """POST /api/sessions/{id}/cancel: an open, queued or blocked session is cancelled."""
    client = _authenticate(request)
    session = _session(request, client)
    state = _state(request)
    control, worker = state.running()
    if not control.cancel(session.id, f"cancelled by client {client.identifier}"):
        current = control.get(session.id) or session
        raise _conflict(current, f"a {current.state} session cannot be cancelled")
    state.sealed.add(session.id)
    discard_files(state.sessions_dir, session.id)
    worker.wake()  # the next session of its connector may now go
    cancelled = control.get(session.id)
    assert cancelled is not None and cancelled.state == CANCELLED
    return JSONResponse(cancelled.to_json())


async def resources(request: Request) -> Response:
    """GET /api/connectors/{c}/tables/{table}/resources: stored rows as CSV, in key order."""
    client = _authenticate(request)
    connector = _connector(request, client)
    state = _state(request)
    state.running()
    table: str = request.path_params["table"]
    spec = state.folded_tables(connector).get(table.casefold())
    if spec is None:
        raise ApiError(404, f"connector {connector!r} has no table {table!r}")
    # A sync iterator: Starlette pulls it from a worker thread, so SQLite never blocks the loop.
    rows = iter_table_csv(state.data_dir / "store.sqlite3", connector, spec.name, spec.columns)
    return StreamingResponse(rows, media_type="text/csv; charset=utf-8")


async def status_page(request: Request) -> Response:
    state = _state(request)
    control, _worker = state.running()
    sessions = {connector: control.recent(connector, RECENT_SESSIONS) for connector in state.tables}
    counts = await anyio.to_thread.run_sync(table_counts, state.data_dir / "store.sqlite3")
    return HTMLResponse(render_status(state.tables, counts, sessions))


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
        )
        state.control = Control(data / "sessions.sqlite3")
        state.worker = worker
        worker.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(worker.stop)
            state.control.close()
            state.control = state.worker = None

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
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
