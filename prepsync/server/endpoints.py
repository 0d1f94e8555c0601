"""Token, mappings, session and resources endpoints (REFERENCE §7); uploads are in uploads.py."""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from html import escape
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from prepsync.protocol import (
    BLOCKED,
    CANCELLED,
    DEFAULT_SEPARATOR,
    DONE,
    FAILED,
    FULL_MODES,
    MODES,
    OPEN,
    SCOPE,
    separator_problem,
)
from prepsync.server.clients import OpenIdClient
from prepsync.server.context import ServerState, state_of
from prepsync.server.disk import reclaiming
from prepsync.server.guards import (
    authenticate,
    conflict,
    connector_of,
    is_operator,
    readable_session_of,
    require_operator,
    session_of,
)
from prepsync.server.http import (
    ApiError,
    error_response,
    integer_parameter,
    read_body,
    read_json_object,
)
from prepsync.server.session_files import discard_files
from prepsync.server.sessions import ForeignAgent, Session, SupersededChanged
from prepsync.server.status import RECENT_SESSIONS, SECURITY_HEADERS, StatusView, render_status
from prepsync.server.tokens import basic_credentials

FORM_LIMIT = 64 * 1024
AGENT_MAX = 256
LIST_DEFAULT, LIST_MAX = 100, 10_000
# GET /api/sessions/{id}?wait=S holds the answer until the session's state changes, at most
# this long (a held request also holds a graceful shutdown), looking every STATUS_WAIT_STEP.
STATUS_WAIT_MAX, STATUS_WAIT_STEP = 5.0, 0.02
SETTLED = frozenset({DONE, FAILED, CANCELLED})
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{0,9})?")
# Stands in for an unknown client id; its hash is of no secret (32 zero bytes, base64).
_NO_CLIENT = OpenIdClient("", "A" * 43 + "=", None)


async def token(request: Request) -> Response:
    """POST /connect/token: OAuth 2 client credentials (RFC 6749 §4.4)."""
    state = state_of(request)
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
            "access_token": state.signer.issue(
                client.identifier, client.hashed_secret, state.token_ttl
            ),
            "token_type": "Bearer",
            "expires_in": state.token_ttl,
            "scope": SCOPE,
        },
        headers={"Cache-Control": "no-store"},
    )


def _oauth_error(status: int, code: str, description: str) -> Response:
    return error_response(status, code, {"error_description": description})


async def mappings(request: Request) -> Response:
    client = authenticate(request)
    connector = connector_of(request, client)
    return JSONResponse(state_of(request).mappings[connector].to_json())


async def open_session(request: Request) -> Response:
    """POST /api/connectors/{c}/sessions {"agent", "mode"} -> 201 {"id", ...}."""
    client = authenticate(request)
    connector = connector_of(request, client)
    state = state_of(request)
    db, worker = state.running()
    document = await read_json_object(request)
    agent, mode = document.get("agent"), document.get("mode")
    if not isinstance(agent, str) or not agent or len(agent) > AGENT_MAX:
        raise ApiError(400, f"'agent' must be a non-empty string of at most {AGENT_MAX} characters")
    if not isinstance(mode, str) or mode.lower() not in MODES:
        raise ApiError(400, f"'mode' must be one of {', '.join(MODES)}")
    separator = document.get("separator", DEFAULT_SEPARATOR)
    if not isinstance(separator, str) or separator_problem(separator):
        raise ApiError(400, f"'separator': {separator_problem(str(separator))}")
    session_id = str(uuid.uuid4())
    mode = mode.lower()
    # Directory first: a recorded session always has its directory.
    (state.sessions_dir / session_id).mkdir(mode=0o700)
    # With several processes, the sessions this opening supersedes are held while it cancels
    # them and discards their files (see sessions_held): an upload or a commit of one of them
    # in another process finishes first, instead of finding its files gone under it.
    several = state.backend.several_processes
    held: list[str] = []

    def free_orphans() -> None:
        # On a full disk, the open sessions this opening cancels give their room first (most
        # likely an orphan of a killed run filled it); their uploads are closed from now on.
        for other in db.unfinished():
            if (
                other.connector == connector
                and other.state == OPEN
                and (
                    mode in FULL_MODES
                    or (other.agent == agent and other.client == client.identifier)
                )
                and (not several or other.id in held)
            ):
                state.sealed.add(other.id)
                discard_files(state.sessions_dir, other.id)

    try:
        while True:
            if several:
                held = db.superseded(connector, agent, mode, client.identifier)
            async with state.sessions_held(held, exclusive=True):
                try:
                    cancelled = reclaiming(
                        functools.partial(
                            db.open,
                            connector,
                            agent,
                            mode,
                            session_id,
                            client.identifier,
                            separator,
                            held if several else None,
                        ),
                        None,  # new work does not use the reserve
                        free_orphans,
                    )
                except SupersededChanged:
                    continue  # another session to supersede appeared meanwhile: hold it too
                for other in cancelled:
                    state.sealed.add(other)
                    discard_files(state.sessions_dir, other)
            break
    except BaseException as error:
        discard_files(state.sessions_dir, session_id)
        if isinstance(error, ForeignAgent):
            raise ApiError(409, str(error), extra={"agent": error.owner}) from None
        raise
    worker.wake()
    session = db.get(session_id)
    assert session is not None
    state.events.opened(session, cancelled)
    return JSONResponse(
        session.to_json(),
        status_code=201,
        headers={"Location": f"/api/sessions/{session_id}"},
    )


async def list_sessions(request: Request) -> Response:
    client = authenticate(request)
    connector = connector_of(request, client)
    db, _worker = state_of(request).running()
    limit = integer_parameter(request, "limit", 1, LIST_MAX)
    sessions = db.recent(connector, LIST_DEFAULT if limit is None else limit)
    return JSONResponse([session.to_json() for session in sessions])


async def get_session(request: Request) -> Response:
    """GET /api/sessions/{id}[?wait=S]: the session. With ``wait``, the answer comes as soon
    as its state differs from the one it had when asked, or after S seconds (at most
    STATUS_WAIT_MAX): an agent waiting for a verdict sees it at once, in no more requests
    than polling would cost."""
    client = authenticate(request)
    session = readable_session_of(request, client)
    text = request.query_params.get("wait", "0")
    # ASCII only: float() also takes Arabic-Indic digits, "1_0", " 1", "nan" and "1e9".
    if _SECONDS.fullmatch(text) is None:
        raise ApiError(400, "'wait' must be a number of seconds >= 0, such as 2 or 2.5")
    wait = float(text)
    if wait > 0 and session.state not in SETTLED:  # a settled session never changes
        db, _worker = state_of(request).running()
        asked, loop = session.state, asyncio.get_running_loop()
        deadline = loop.time() + min(wait, STATUS_WAIT_MAX)
        while session.state == asked and (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(STATUS_WAIT_STEP, left))
            session = db.get(session.id) or session
    return JSONResponse(session.to_json())


async def force(request: Request) -> Response:
    """POST /api/sessions/{id}/force: a blocked session is queued again, thresholds off.
    Operators only."""
    client = authenticate(request)
    session = session_of(request, client)
    require_operator(request, client, "forcing a session")
    db, worker = state_of(request).running()
    if not db.force(session.id):
        raise conflict(session, f"only a blocked session can be forced; it is {session.state}")
    worker.wake()
    forced = db.get(session.id)
    assert forced is not None
    state_of(request).events.forced(forced, f"client {client.identifier}")
    return JSONResponse(forced.to_json(), status_code=202)


async def cancel(request: Request) -> Response:
    """POST /api/sessions/{id}/cancel: an open, queued or blocked session is cancelled.

    An operator cancels any; another client only its own, and only before its commit (a
    committed session is the operator's to settle: cancelling an incremental one loses its
    changes). A client's own settled session still gets the 409 of any settled session, so a
    cancel repeated after a lost answer learns the session's state."""
    client = authenticate(request)
    session = session_of(request, client)
    operator = is_operator(request, client)
    if not operator:
        _check_own_cancel(request, client, session)
    state = state_of(request)
    db, worker = state.running()
    # Exclusive against the other processes' uploads and commits of the session: no commit of
    # another process queues it between the check below and the discarding of its files.
    async with state.session_held(session.id, exclusive=True):
        _cancel_held(request, client, operator, session)
    worker.wake()  # the next session of its connector may now go
    cancelled = db.get(session.id)
    assert cancelled is not None and cancelled.state == CANCELLED
    state.events.cancelled(session.id, session.connector, f"client {client.identifier}")
    return JSONResponse(cancelled.to_json())


def _cancel_held(request: Request, client: OpenIdClient, operator: bool, session: Session) -> None:
    """The cancel itself, once the session is held against the other processes."""
    state = state_of(request)
    db, _worker = state.running()
    session = db.get(session.id) or session  # as it is now that it is held
    cancel_session = db.cancel if operator else db.cancel_open

    def free_first() -> None:
        # Files no one else reads (the worker reads only queued and processing sessions').
        if session.state in (OPEN, BLOCKED):
            state.sealed.add(session.id)
            discard_files(state.sessions_dir, session.id)

    reason = f"cancelled by client {client.identifier}"
    if not reclaiming(lambda: cancel_session(session.id, reason), state.reserve, free_first):
        current = db.get(session.id) or session
        if not operator:  # committed since it was read
            _check_own_cancel(request, client, current)
        raise conflict(current, f"a {current.state} session cannot be cancelled")
    state.sealed.add(session.id)
    discard_files(state.sessions_dir, session.id)


def _check_own_cancel(request: Request, client: OpenIdClient, session: Session) -> None:
    """403 when a delivering client's cancel is an operator's: another client's session, or
    its own once committed and not yet settled."""
    if session.client is not None and session.client != client.identifier:
        require_operator(request, client, "cancelling another client's session")
    if session.state not in SETTLED and session.state != OPEN:
        require_operator(request, client, f"cancelling a committed ({session.state}) session")


async def resources(request: Request) -> Response:
    """GET /api/connectors/{c}/tables/{table}/resources: stored rows as CSV, in key order."""
    client = authenticate(request)
    connector = connector_of(request, client)
    state = state_of(request)
    state.running()
    table: str = request.path_params["table"]
    spec = state.folded_tables(connector).get(table.casefold())
    if spec is None:
        raise ApiError(404, f"connector {connector!r} has no table {table!r}")
    # A sync iterator: Starlette pulls it from a worker thread, so SQLite never blocks the loop.
    rows = state.backend.resources_csv(connector, spec.name, spec.columns)
    return StreamingResponse(rows, media_type="text/csv; charset=utf-8")


def _is_operator(state: ServerState, client: OpenIdClient) -> bool:
    """The client's Profile is the server's operator profile (the rule of guards.is_operator)."""
    return client.profile is not None and client.profile == state.operator_profile


def _operator_viewing(request: Request) -> OpenIdClient | None:
    """The operator the request speaks for: by a bearer token, or by the client id and secret
    a browser sends (HTTP Basic, RFC 7617: a browser cannot add a bearer token to a page it
    loads). None for anyone else (no credentials, bad ones, or another client's: the page then
    shows what an anonymous viewer sees)."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        return None
    state = state_of(request)
    credentials = basic_credentials(authorization, form_encoded=False)
    if credentials is not None:
        client = state.clients.get(credentials[0])
        # Checked against a dummy for unknown ids too, as at the token endpoint.
        if not (client or _NO_CLIENT).check_secret(credentials[1]) or client is None:
            return None
    else:
        try:
            client = authenticate(request)
        except ApiError:
            return None
    return client if _is_operator(state, client) else None


# `GET /?operator`: a browser is asked for an operator client's id and secret (Basic), sent
# again with each request to the page, its refreshes included.
_SIGN_IN = {"WWW-Authenticate": 'Basic realm="prepsync operators", charset="UTF-8"'}


async def status_page(request: Request) -> Response:
    state = state_of(request)
    db, _worker = state.running()
    viewer = _operator_viewing(request)
    if viewer is None and "operator" in request.query_params:
        return HTMLResponse(
            "<!DOCTYPE html><html><body><p>This page shows failure reasons to an operator: "
            "sign in with the client id and secret of a client whose Profile is "
            f"{escape(state.operator_profile)}. <a href='/'>Back</a></p></body></html>",
            status_code=401,
            headers={**SECURITY_HEADERS, **_SIGN_IN},
        )
    operators = sorted(c.identifier for c in state.clients.values() if _is_operator(state, c))
    view = StatusView(
        tables=state.tables,
        row_counts=await anyio.to_thread.run_sync(state.backend.table_counts),
        recent={connector: db.recent(connector, RECENT_SESSIONS) for connector in state.tables},
        unfinished=db.unfinished(),
        api_url=str(request.base_url).rstrip("/"),
        operator_client=viewer.identifier if viewer else (operators[0] if operators else None),
        show_reasons=viewer is not None,
        session_timeout=state.session_timeout,
    )
    return HTMLResponse(render_status(view), headers=SECURITY_HEADERS)


HEALTH_TIMEOUT = 5.0  # seconds: a store slower than this to answer is not healthy


async def health(request: Request) -> Response:
    """GET /healthz: 200 when the process serves, its worker runs and both the sessions
    database and the store answer; 503 otherwise, saying which part failed. No token: a
    load balancer or a container runtime asks it, and it shows no data."""
    state = state_of(request)
    checks: dict[str, str] = {}
    try:
        db, worker = state.running()
    except ApiError as error:
        return JSONResponse({"status": "unavailable", "error": error.message}, status_code=503)
    checks["worker"] = "running" if worker.alive else "stopped"
    try:
        with anyio.fail_after(HEALTH_TIMEOUT):
            if state.backend.several_processes:
                # A database server that hangs must give a 503, not hang the event loop: the
                # query goes to a thread (psycopg's connection serializes its users), abandoned
                # at the timeout. SQLite's connection stays on the loop's thread, where it is
                # used; a local file does not hang that way.
                await anyio.to_thread.run_sync(db.state_counts, abandon_on_cancel=True)
            else:
                db.state_counts()
            checks["sessions"] = "ok"
            await anyio.to_thread.run_sync(state.backend.table_counts, abandon_on_cancel=True)
            checks["store"] = "ok"
    except TimeoutError:
        part = "store" if "sessions" in checks else "sessions"
        checks[part] = f"no answer within {HEALTH_TIMEOUT:g} s"
    except Exception as error:  # what the store raises is the answer: say it, do not crash
        failed = "store" if "sessions" in checks else "sessions"
        checks[failed] = f"{type(error).__name__}: {error}"
    healthy = all(value in ("ok", "running") for value in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "backend": state.backend.name, **checks},
        status_code=200 if healthy else 503,
        headers={"Cache-Control": "no-store"},
    )


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format, or OpenMetrics when the scraper asks for it (see
    prepsync.server.events). No token: it shows counts, no data."""
    from prometheus_client.exposition import choose_encoder

    state = state_of(request)
    state.running()
    try:
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
    except (TypeError, ValueError):  # prometheus_client compares an odd version= and fails
        raise ApiError(400, "Accept: the openmetrics version must be digits and dots") from None
    return Response(encode(state.events.registry), headers={"Content-Type": content_type})
