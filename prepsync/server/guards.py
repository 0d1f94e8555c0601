"""The checks every /api request starts with: who is calling (a valid bearer token of a
configured client), and whether that client may touch the connector or session in the path.

401 without a valid token, 403 for a connector the client may not use, 404 for an unknown
session or, for writes, another client's session (:func:`owned_session_of`).

Two roles. An *operator* is a client whose ``Profile`` is the server's operator profile
(``serve --operator-profile``, ``Administrator`` by default): on the connectors it is allowed
on, it reads any session, reads its changes, forces and cancels it. Any other client *delivers*:
token, mappings, opening a session, uploading and committing its own, the connector's session
list, the state of its own sessions (another client's is a 404, as for writes), the stored
resources, and cancelling its own session while it is still open (a failed run cleans up).
Forcing, reading changes, and cancelling another client's or a committed session get 403 with
a reason naming the operator profile (:func:`require_operator`): an agent whose mass deletion
was blocked must not be able to force it with its own credentials.
"""

from __future__ import annotations

from starlette.requests import Request

from prepsync.server.clients import OpenIdClient
from prepsync.server.context import state_of
from prepsync.server.http import ApiError
from prepsync.server.sessions import Session, canonical_session_id
from prepsync.server.tokens import bearer_token


def authenticate(request: Request) -> OpenIdClient:
    state = state_of(request)
    token = bearer_token(request.headers.get("authorization"))
    client_id = None if token is None else state.signer.verify(token, state.hashed_secret_of)
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


def is_operator(request: Request, client: OpenIdClient) -> bool:
    """Whether the client's ``Profile`` is the server's operator profile (exact match)."""
    return client.profile is not None and client.profile == state_of(request).operator_profile


def require_operator(request: Request, client: OpenIdClient, action: str) -> None:
    """403 unless the client is an operator; ``action`` says what was refused."""
    if is_operator(request, client):
        return
    operator_profile = state_of(request).operator_profile
    has = "no Profile" if client.profile is None else f"Profile {client.profile!r}"
    raise ApiError(
        403,
        f"{action} needs an operator: client {client.identifier!r} has {has}, not the "
        f"server's operator profile {operator_profile!r}",
        extra={"operator_profile": operator_profile},
    )


def session_of(request: Request, client: OpenIdClient) -> Session:
    """The session named in the path, for an operator's action (force, cancel, changes; the
    caller checks the role): any client allowed on its connector (403 otherwise); 404 when
    unknown."""
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


def readable_session_of(request: Request, client: OpenIdClient) -> Session:
    """The session named in the path, for reading its state: an operator reads any session of
    its connectors, another client only its own (404 for the rest, as for writes)."""
    if is_operator(request, client):
        return session_of(request, client)
    return owned_session_of(request, client)


def conflict(session: Session, message: str) -> ApiError:
    return ApiError(409, message, extra={"state": session.state})
