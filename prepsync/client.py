"""The agent's client of the server's API (httpx, synchronous): one method per endpoint.

What it is made of, each in its module: :mod:`prepsync.api_url` reads ``--api-url``,
:mod:`prepsync.token_auth` holds the bearer token (an ``httpx.Auth``), :mod:`prepsync.exchange`
sends a request and retries it, :mod:`prepsync.upload` is the resumable upload of one file.
The names callers use are all importable from here.

Decisions (where the API leaves a choice):

- **Opening a session is not idempotent.** Before posting, the client lists the connector's
  sessions. After a failed post (which may have reached the server: the answer, not the
  request, may be what was lost) it lists them again and *adopts* a session that appeared
  meanwhile, is ``open``, and has this agent and mode; it reposts only when there is none.
  When several appeared (more than one lost answer), it adopts the newest and cancels the
  others: an orphan ``open`` incremental session would hold every later session of the
  connector back until the server abandons it (``--session-timeout``, an hour by default).
  After a successful repost, the list is read once more for a failed post that arrived late
  (a timed-out request the server was still reading), and such sessions are cancelled too.
  Not handled: a post delivered even later than that. The server cancels the ``open``
  sessions of the agent that opens one, so such a late session cancels ours: the run then
  fails with a 409 (nothing sent is lost: the baselines have not moved) and the next run
  cancels the late one as it opens its own. Nor a second agent using the same agent name
  and client on the same connector at the same moment: each would cancel the other's open
  session (one agent name per agent host is the deployment rule).
- **Cancel and force** are not idempotent on the server (a repeat answers 409). When a repeat
  follows a lost answer and the session is already cancelled (resp. forced), that is success.
- **Commit** is idempotent on the server: a repeat answers 200 with the state. A commit whose
  verification outlasts ``timeout`` is retried; the server serialises commits of a session, so
  the repeat waits for the verification in progress (or, if that one was abandoned, redoes
  it) and then reports the state.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from prepsync.api_url import parse_api_url
from prepsync.config import Mappings
from prepsync.errors import ServerError
from prepsync.exchange import Backoff, Exchange, Retryable, RetryPolicy, object_of, refusal
from prepsync.exchange import json_of as _json_of
from prepsync.protocol import CANCELLED, DEFAULT_SEPARATOR, NEXT_AFTER_HEADER, OPEN
from prepsync.request import DEFAULT_UPLOAD_CHUNK_SIZE
from prepsync.token_auth import TOKEN_PATH, ClientCredentials
from prepsync.upload import FileReceipt, FileUpload

__all__ = [
    "TOKEN_PATH",
    "ApiClient",
    "FileReceipt",
    "FileUpload",
    "RetryPolicy",
    "ServerError",
    "parse_api_url",
]

logger = logging.getLogger("prepsync")

_SESSION_LIST_LIMIT = 100
_DEFAULT_RETRY = RetryPolicy()  # frozen: one shared default is harmless


def _q(segment: str) -> str:
    """One path segment, percent-encoded (a '/' in a name must not become a separator)."""
    return quote(segment, safe="")


class ApiClient:
    """Synchronous client of the prepsync server; not safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        secret: str,
        *,
        retry: RetryPolicy = _DEFAULT_RETRY,
        chunk_size: int = DEFAULT_UPLOAD_CHUNK_SIZE,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        if chunk_size <= 0:
            raise ValueError("chunk_size must be > 0")
        self._base_url = base_url
        self._chunk_size = chunk_size
        # The token URL joins under the base URL's path the way httpx joins "/api/...".
        self._auth = ClientCredentials(
            httpx.Client(base_url=base_url).base_url, client_id, secret, clock=clock
        )
        self._exchange = Exchange(
            base_url,
            self._auth,
            retry=retry,
            timeout=timeout,
            transport=transport,
            sleep=sleep,
            rng=rng if rng is not None else random.Random(),
        )

    def __repr__(self) -> str:
        return f"ApiClient({self._base_url!r}, client_id={self.client_id!r})"

    @property
    def client_id(self) -> str:
        return self._auth.client_id

    @property
    def auth(self) -> ClientCredentials:
        """The token cache every request of this client goes through."""
        return self._auth

    def close(self) -> None:
        self._exchange.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------ endpoints

    def mappings(self, connector: str) -> Mappings:
        """The connector's mappings (REFERENCE §1 as JSON); ConfigError if they are unusable."""
        path = f"/api/connectors/{_q(connector)}/mappings"
        mappings = Mappings.from_json(_json_of("GET", path, self._exchange.call("GET", path)))
        if mappings.connector != connector:
            raise ServerError(
                f"server GET {path}: mappings are for connector {mappings.connector!r}, "
                f"not {connector!r}"
            )
        return mappings

    def open_session(
        self, connector: str, agent: str, mode: str, separator: str = DEFAULT_SEPARATOR
    ) -> str:
        """Open a session and return its id; see the module notes on lost answers."""
        path = f"/api/connectors/{_q(connector)}/sessions"
        backoff = self._exchange.backoff()
        before = {session.get("id") for session in self._list(connector, backoff)}
        failed = False
        while True:
            try:
                response = self._exchange.send(
                    "POST", path, json={"agent": agent, "mode": mode, "separator": separator}
                )
            except Retryable as failure:
                backoff.pause(failure)
                failed = True
                mine = self._opened_since(connector, agent, mode, before, backoff)
                if mine:  # the post arrived, its answer did not: adopt the newest
                    logger.warning("adopted session %s: the answer to opening it was lost", mine[0])
                    self._cancel_orphans(mine[1:])
                    return mine[0]
                continue
            session_id = object_of("POST", path, response).get("id")
            if not isinstance(session_id, str) or not session_id:
                raise ServerError(f"server POST {path}: answer has no session id")
            if failed:  # a post we gave up on may have reached the server after we looked
                mine = self._opened_since(connector, agent, mode, before, backoff)
                self._cancel_orphans([other for other in mine if other != session_id])
            return session_id

    def session(self, session_id: str, wait: float = 0.0) -> dict[str, Any]:
        """The session's state; ``wait`` > 0 asks the server to answer only once the state
        changes or ``wait`` seconds pass (a server that does not know ``wait`` answers at
        once)."""
        path = f"/api/sessions/{_q(session_id)}"
        params = {"wait": f"{wait:.3f}"} if wait > 0 else None
        return object_of("GET", path, self._exchange.call("GET", path, params=params))

    def sessions(self, connector: str, limit: int = _SESSION_LIST_LIMIT) -> list[dict[str, Any]]:
        """The connector's latest ``limit`` sessions, newest first."""
        return self._list(connector, self._exchange.backoff(), limit)

    def changes(
        self,
        session_id: str,
        *,
        table: str | None = None,
        command: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> tuple[bytes, str | None]:
        """One page of the changes a session makes (or would make if forced), as CSV, and the
        ``after`` value of the next page (None when this page is the last)."""
        query = {"table": table, "command": command, "limit": limit, "after": after}
        params = {name: str(value) for name, value in query.items() if value is not None}
        path = f"/api/sessions/{_q(session_id)}/changes"
        response = self._exchange.call("GET", path, params=params)
        return response.content, response.headers.get(NEXT_AFTER_HEADER)

    def cancel(self, session_id: str) -> dict[str, Any]:
        return self._transition(session_id, "cancel", lambda s: s.get("state") == CANCELLED)

    def force(self, session_id: str) -> dict[str, Any]:
        return self._transition(session_id, "force", lambda s: s.get("forced") is True)

    def commit(self, session_id: str, files: Sequence[FileReceipt]) -> dict[str, Any]:
        """Ask the server to verify the files and queue the session; returns its state."""
        path = f"/api/sessions/{_q(session_id)}/commit"
        listing = [{"name": f.name, "size": f.size, "xxh3_128": f.xxh3_128} for f in files]
        return object_of("POST", path, self._exchange.call("POST", path, json={"files": listing}))

    def resources(self, connector: str, table: str) -> bytes:
        """The table's stored rows as CSV (whole body: for tests and the demo)."""
        path = f"/api/connectors/{_q(connector)}/tables/{_q(table)}/resources"
        return self._exchange.call("GET", path).content

    def upload(
        self,
        session_id: str,
        path: Path,
        name: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> FileReceipt:
        """Send ``path`` as ``name`` (its own name by default), resuming what already arrived.

        ``progress(bytes the server holds, file size)`` is called as chunks are acknowledged.
        """
        with self.file_upload(session_id, path, name, progress=progress) as sending:
            while not sending.sent(written=True):
                sending.step(written=True)
            return sending.receipt()

    def file_upload(
        self,
        session_id: str,
        path: Path,
        name: str | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
        pause: Callable[[float], None] | None = None,
    ) -> FileUpload:
        """An upload of ``path`` to the session, stepped by the caller (see FileUpload)."""
        return FileUpload(
            self._exchange,
            session_id,
            path,
            name,
            chunk_size=self._chunk_size,
            progress=progress,
            pause=pause,
        )

    # ------------------------------------------------------------------------ sessions

    def _list(
        self, connector: str, backoff: Backoff, limit: int = _SESSION_LIST_LIMIT
    ) -> list[dict[str, Any]]:
        path = f"/api/connectors/{_q(connector)}/sessions?limit={limit}"
        listing = _json_of("GET", path, self._exchange.call("GET", path, backoff=backoff))
        if not isinstance(listing, list) or not all(isinstance(s, dict) for s in listing):
            raise ServerError(f"server GET {path}: answer is not a list of sessions")
        return listing

    def _opened_since(
        self, connector: str, agent: str, mode: str, before: set[Any], backoff: Backoff
    ) -> list[str]:
        """Open sessions of this agent and mode not listed in ``before``, newest first."""
        return [
            str(session["id"])
            for session in self._list(connector, backoff)
            if session.get("id") not in before
            and session.get("agent") == agent
            and session.get("mode") == mode.lower()
            and session.get("state") == OPEN
        ]

    def _cancel_orphans(self, orphans: Sequence[str]) -> None:
        """Cancel sessions our lost requests opened: an open one holds its connector back."""
        for session_id in orphans:
            try:
                self.cancel(session_id)
            except ServerError as error:
                # Not fatal: the server abandons it after its session timeout.
                logger.warning("could not cancel orphan session %s: %s", session_id, error)
            else:
                logger.warning("cancelled session %s, opened by a request thought lost", session_id)

    def _transition(
        self, session_id: str, action: str, done: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """POST cancel/force; a 409 after a lost answer is success when ``done`` says so."""
        path = f"/api/sessions/{_q(session_id)}/{action}"
        backoff = self._exchange.backoff()
        while True:
            try:
                response = self._exchange.send(
                    "POST", path, accept=(409,) if backoff.retries else ()
                )
            except Retryable as failure:
                backoff.pause(failure)
                continue
            if response.status_code != 409:
                return object_of("POST", path, response)
            current = self.session(session_id)
            if done(current):
                return current
            raise refusal("POST", path, response)
