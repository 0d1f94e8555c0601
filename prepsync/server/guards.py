"""The checks every /api request starts with: who is calling (a valid bearer token of a
configured client), and whether that client may touch the connector or session in the path.

401 without a valid token, 403 for a connector the client may not use, 404 for an unknown
session or, for writes, another client's session (:func:`owned_session_of`).
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
