"""The agent's HTTP client for the server (REFERENCE §7) (httpx, synchronous; one
:class:`FileUpload` is stepped by one thread, which may run beside the caller's).

Decisions (where REFERENCE §7 leaves a choice):

- **Token.** ``POST /connect/token`` with the client-credentials form, fetched on the first /api
  call and cached. It is fetched again once less than ``min(60 s, 10 % of expires_in)`` of its
  life remains (an answer without ``expires_in`` is kept until a 401), and once when an /api
  call answers 401 (a token signed with a key the server no longer has, a clock jump); a second
  401 for the same request is a :class:`ServerError`.
- **Retries.** Transport failures (connection refused or reset, timeouts, read and write
  errors), 429 and every 5xx are retried with exponential backoff and full jitter
  (``uniform(0, min(max_delay, first_delay * 2**n))``), or after ``Retry-After`` on 429/503
  (capped by ``max_delay``). An operation gives up with a :class:`ServerError` naming its last
  problem once the next pause would take its cumulated waiting past ``total_seconds``. An upload
  restarts that budget whenever the server holds more of the file than ever before, so a huge
  upload over a flaky link is bounded per stall, not in total. Other 4xx are not retried: the
  ServerError is one line, ``server <METHOD> <path>: <status> <server's "error" text>``.
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
- **Uploads** ask the server how many bytes it holds, then send the rest in ``chunk_size``
  chunks with ``Content-Range: bytes a-b/total`` (``a-b/*`` for the whole chunks sent while
  the file is still being written, :class:`FileUpload`), always continuing from the size the
  server reports: after each chunk, the size in its answer; after a failure or a 416 (a gap: the
  server lost bytes it had acknowledged), the size a new GET reports. The server is
  the truth: if it holds more bytes than the file, a file of at most one chunk is sent again
  whole (a PUT without Content-Range replaces the file), a longer one is an error. An empty
  file is a PUT without Content-Range and with an empty body (a Content-Range cannot describe
  zero bytes). The xxh3-128 of the receipt covers the whole local file: bytes the server already
  has are read locally to hash them, and every byte is hashed exactly once, in order. Resuming
  assumes the bytes on the server are this file's; if they are not (another file of that name
  sent earlier in the session), the commit's hash check refuses it with a 422.
- **Secrets** never reach logs, exceptions or ``repr``: the secret is only in the token
  request's form body, which httpx does not log; the token is only in a request header, which
  httpx does not log either (its INFO line is method, URL and status).
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
import xxhash

from prepsync.config import Mappings
from prepsync.errors import PrepsyncError, ServerError, UsageError
from prepsync.protocol import CANCELLED, DISK_FULL, NEXT_AFTER_HEADER, OPEN, SCOPE

logger = logging.getLogger("prepsync")

TOKEN_PATH = "/connect/token"
_HASH_BLOCK = 1 << 20
_SESSION_LIST_LIMIT = 100
# Transport errors that no retry can cure: a wrong URL scheme, a malformed request.
_PERMANENT_TRANSPORT_ERRORS = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


# What OpenSSL says when the server answers a TLS handshake in plain HTTP (an error page).
_PLAIN_HTTP_SSL_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
)


def _plain_http_answer(error: BaseException) -> bool:
    """The TLS handshake failed because the server answered in plain HTTP."""
    seen: BaseException | None = error
    for _depth in range(8):  # the ssl error sits a few causes down (httpx -> httpcore -> ssl)
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) and seen.reason in _PLAIN_HTTP_SSL_REASONS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_SCHEME_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_HOST_NAME = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?"
)


def parse_api_url(text: str) -> str:
    """The server's base URL from what a user typed after ``--api-url``.

    A bare host (``myserver.example.com``, ``host:5000``, ``host/prefix``), as Identity
    Manager's docs write it, means ``https://`` that host. Anything else must be an http(s) URL
    with a host, an optional valid port and path, and nothing more: a scheme other than http(s),
    a missing host, a bad port, a space, credentials, a query or a fragment are a
    :class:`UsageError` in one line, since each would only fail later and less clearly (or, for
    credentials, end up in logs).
    """

    def refuse(problem: str) -> UsageError:
        return UsageError(f"--api-url {text!r}: {problem}")

    if not text:
        raise refuse("empty")
    if any(character.isspace() for character in text):
        raise refuse("contains white space")
    scheme = _SCHEME_PREFIX.match(text)
    if scheme is None and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", text):
        raise refuse("malformed URL (a scheme is followed by '://')")
    if scheme is None:
        url = f"https://{text}"
    elif scheme.group(1).lower() in ("http", "https"):
        url = text
    else:
        raise refuse(f"unsupported scheme {scheme.group(1)!r} (use https://host or http://host)")
    try:
        parts = urllib.parse.urlsplit(url)  # checks a bracketed IPv6 literal too
    except ValueError as error:
        raise refuse(f"malformed URL ({error})") from None
    if "@" in parts.netloc:
        raise refuse("must not hold credentials (use --api-client-id and --api-secret)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise refuse("a server URL has no query or fragment")
    host = parts.hostname or ""
    if not host:
        raise refuse("no host")
    if ":" not in host and not _HOST_NAME.fullmatch(host):  # ":": an IPv6 literal, checked
        raise refuse(f"invalid host name {host!r}")
    if parts.netloc.endswith(":"):
        raise refuse("empty port")
    try:
        port = parts.port
    except ValueError:
        raise refuse("invalid port (a number from 1 to 65535)") from None
    if port == 0:
        raise refuse("invalid port (a number from 1 to 65535)")
    return url


@dataclass(frozen=True)
class FileReceipt:
    name: str
    size: int
    xxh3_128: str  # hex digest of the whole file


@dataclass(frozen=True)
class RetryPolicy:
    total_seconds: float = 300.0  # give up once retrying would take the waiting past this
    first_delay: float = 0.5
    max_delay: float = 30.0


class _Retry(Exception):
    """One attempt failed in a way another attempt may not."""

    def __init__(self, request: str, problem: str, retry_after: float | None = None) -> None:
        super().__init__(f"{request}: {problem}")
        self.request = request  # "server METHOD path"
        self.problem = problem
        self.retry_after = retry_after


class _Backoff:
    """The pauses of one operation, and the budget they draw on."""

    def __init__(
        self, policy: RetryPolicy, sleep: Callable[[float], None], rng: random.Random
    ) -> None:
        self._policy = policy
        self._sleep = sleep
        self._rng = rng
        self.retries = 0
        self.waited = 0.0

    def pause(self, failure: _Retry) -> None:
        """Sleep before the next attempt, or raise ServerError when the budget is spent."""
        policy = self._policy
        # The exponent is capped: 2**n overflows a float long before any sane budget ends.
        ceiling = min(policy.max_delay, policy.first_delay * 2 ** min(self.retries, 60))
        delay = self._rng.uniform(0, ceiling)
        if failure.retry_after is not None:
            delay = min(policy.max_delay, failure.retry_after)
        if self.waited + delay > policy.total_seconds:
            raise ServerError(
                f"{failure.request}: gave up after {self.retries + 1} attempts and "
                f"{self.waited:.1f} s of waiting: {failure.problem}"
            )
        self.retries += 1
        logger.warning(
            "%s: %s; retry %d in %.1f s", failure.request, failure.problem, self.retries, delay
        )
        self._sleep(delay)
        self.waited += delay

    def reset(self) -> None:
        self.retries = 0
        self.waited = 0.0


class _Secret:
    """A string that shows as ``<secret>`` wherever it is printed by mistake."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # on the client's clock

    def __repr__(self) -> str:
        return f"_Token(refresh_at={self.refresh_at})"


def _q(segment: str) -> str:
    """One path segment, percent-encoded (a '/' in a name must not become a separator)."""
    return quote(segment, safe="")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date), None when absent."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _error_text(response: httpx.Response) -> str:
    """The server's ``{"error": ...}`` text (OAuth's description added), else the reason."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        text: str = document["error"]
        description = document.get("error_description")
        if isinstance(description, str) and description:
            text = f"{text}: {description}"
        return _one_line(text)
    return _one_line(response.reason_phrase or response.text[:200])


class ApiClient:
    """Synchronous client of the prepsync server; not safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        secret: str,
        *,
        retry: RetryPolicy = RetryPolicy(),  # frozen: one shared default is harmless
        chunk_size: int = 8 << 20,
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
        self._client_id = client_id
        self._secret = _Secret(secret)
        self._retry = retry
        self._chunk_size = chunk_size
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._token: _Token | None = None
        # httpx joins "/api/..." under base_url's path, with or without a trailing slash.
        self._http = httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(timeout), transport=transport
        )

    def __repr__(self) -> str:
        return f"ApiClient({self._base_url!r}, client_id={self._client_id!r})"

    @property
    def client_id(self) -> str:
        return self._client_id

    def close(self) -> None:
        self._http.close()

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
        mappings = Mappings.from_json(self._json("GET", path, self._call("GET", path)))
        if mappings.connector != connector:
            raise ServerError(
                f"server GET {path}: mappings are for connector {mappings.connector!r}, "
                f"not {connector!r}"
            )
        return mappings

    def open_session(self, connector: str, agent: str, mode: str, separator: str = ",") -> str:
        """Open a session and return its id; see the module notes on lost answers."""
        path = f"/api/connectors/{_q(connector)}/sessions"
        backoff = self._backoff()
        before = {session.get("id") for session in self._list(connector, backoff)}
        failed = False
        while True:
            try:
                response = self._send(
                    "POST", path, json={"agent": agent, "mode": mode, "separator": separator}
                )
            except _Retry as failure:
                backoff.pause(failure)
                failed = True
                mine = self._opened_since(connector, agent, mode, before, backoff)
                if mine:  # the post arrived, its answer did not: adopt the newest
                    logger.warning("adopted session %s: the answer to opening it was lost", mine[0])
                    self._cancel_orphans(mine[1:])
                    return mine[0]
                continue
            session_id = self._object("POST", path, response).get("id")
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
        return self._object("GET", path, self._call("GET", path, params=params))

    def sessions(self, connector: str, limit: int = _SESSION_LIST_LIMIT) -> list[dict[str, Any]]:
        """The connector's latest ``limit`` sessions, newest first."""
        return self._list(connector, self._backoff(), limit)

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
        response = self._call("GET", path, params=params)
        return response.content, response.headers.get(NEXT_AFTER_HEADER)

    def cancel(self, session_id: str) -> dict[str, Any]:
        return self._transition(session_id, "cancel", lambda s: s.get("state") == CANCELLED)

    def force(self, session_id: str) -> dict[str, Any]:
        return self._transition(session_id, "force", lambda s: s.get("forced") is True)

    def commit(self, session_id: str, files: Sequence[FileReceipt]) -> dict[str, Any]:
        """Ask the server to verify the files and queue the session; returns its state."""
        path = f"/api/sessions/{_q(session_id)}/commit"
        listing = [{"name": f.name, "size": f.size, "xxh3_128": f.xxh3_128} for f in files]
        return self._object("POST", path, self._call("POST", path, json={"files": listing}))

    def resources(self, connector: str, table: str) -> bytes:
        """The table's stored rows as CSV (whole body: for tests and the demo)."""
        path = f"/api/connectors/{_q(connector)}/tables/{_q(table)}/resources"
        return self._call("GET", path).content

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
        with FileUpload(self, session_id, path, name, progress=progress) as sending:
            while not sending.sent(written=True):
                sending.step(written=True)
            return sending.receipt()

    # ------------------------------------------------------------------------ uploads

    def _remote_size(self, url: str, backoff: _Backoff) -> int | None:
        """Bytes of the file the server holds; None when it has none (404)."""
        response = self._call("GET", url, backoff=backoff, accept=(404,))
        if response.status_code == 404:
            return None
        return self._reported_size("GET", url, response)

    def _put_next(
        self, url: str, source: _HashingReader, arrived: int | None, written: bool
    ) -> int:
        """Send what comes next; returns the bytes the server then holds. ``written``: the
        file is complete (its size is the total); else only whole chunks go, total ``*``."""
        if written and arrived is None and source.size == 0:
            return self._put_whole(url, source, 0)
        if written and arrived is not None and arrived > source.size:
            return self._put_whole(url, source, arrived)
        start = arrived or 0
        data = source.read_at(start, min(self._chunk_size, source.size - start))
        total = str(source.size) if written else "*"
        headers = {"Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}"}
        response = self._send("PUT", url, accept=(416,), content=data, headers=headers)
        if response.status_code == 416:
            # The server lost bytes since it told us its size (a restore, a crash before a
            # flush). Retried like a failure: the next GET says where to resume, and a server
            # that keeps losing what it accepted runs out the budget instead of looping.
            raise _Retry(f"server PUT {url}", f"416 {_error_text(response)}")
        held = self._reported_size("PUT", url, response)
        if held < start + len(data):  # acknowledged, yet not kept: never loop on it unpaused
            raise _Retry(
                f"server PUT {url}", f"holds {held} bytes after bytes up to {start + len(data)}"
            )
        return held

    def _put_whole(self, url: str, source: _HashingReader, arrived: int) -> int:
        """A PUT without Content-Range: the body replaces the file (empty, or too long there)."""
        if source.size > self._chunk_size:
            raise ServerError(
                f"server PUT {url}: the server holds {arrived} bytes, more than the file's "
                f"{source.size}: it is another file; open a new session"
            )
        data = source.read_at(0, source.size)
        response = self._send("PUT", url, content=data)
        held = self._reported_size("PUT", url, response)
        if held != source.size:
            raise ServerError(
                f"server PUT {url}: holds {held} bytes after a {source.size}-byte PUT"
            )
        return held

    def _reported_size(self, method: str, url: str, response: httpx.Response) -> int:
        size = self._object(method, url, response).get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ServerError(f"server {method} {url}: answer has no valid 'size'")
        return size

    # ------------------------------------------------------------------------ sessions

    def _list(
        self, connector: str, backoff: _Backoff, limit: int = _SESSION_LIST_LIMIT
    ) -> list[dict[str, Any]]:
        path = f"/api/connectors/{_q(connector)}/sessions?limit={limit}"
        listing = self._json("GET", path, self._call("GET", path, backoff=backoff))
        if not isinstance(listing, list) or not all(isinstance(s, dict) for s in listing):
            raise ServerError(f"server GET {path}: answer is not a list of sessions")
        return listing

    def _opened_since(
        self, connector: str, agent: str, mode: str, before: set[Any], backoff: _Backoff
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
        backoff = self._backoff()
        while True:
            try:
                response = self._send("POST", path, accept=(409,) if backoff.retries else ())
            except _Retry as failure:
                backoff.pause(failure)
                continue
            if response.status_code != 409:
                return self._object("POST", path, response)
            current = self.session(session_id)
            if done(current):
                return current
            raise self._refusal("POST", path, response)

    # ------------------------------------------------------------------------ plumbing

    def _backoff(self) -> _Backoff:
        return _Backoff(self._retry, self._sleep, self._rng)

    def _call(
        self,
        method: str,
        path: str,
        *,
        backoff: _Backoff | None = None,
        accept: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """An /api request, retried until it succeeds, is refused, or the budget is spent."""
        backoff = backoff if backoff is not None else self._backoff()
        while True:
            try:
                return self._send(method, path, accept=accept, **kwargs)
            except _Retry as failure:
                backoff.pause(failure)

    def _send(
        self,
        method: str,
        path: str,
        *,
        accept: tuple[int, ...] = (),
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One authorised attempt (two after a 401): 2xx or ``accept`` -> the response;
        _Retry when worth another attempt; ServerError otherwise."""
        extra = dict(headers or {})
        response = self._exchange(method, path, {**extra, **self._authorization()}, **kwargs)
        if response.status_code == 401:
            logger.info("server %s %s: 401; fetching a new token", method, path)
            self._token = None
            response = self._exchange(method, path, {**extra, **self._authorization()}, **kwargs)
        return self._checked(method, path, response, accept)

    def _exchange(
        self, method: str, path: str, headers: Mapping[str, str], **kwargs: Any
    ) -> httpx.Response:
        """Send and read the whole answer; transport failures become _Retry."""
        try:
            return self._http.request(method, path, headers=headers, **kwargs)
        except _PERMANENT_TRANSPORT_ERRORS as error:
            raise ServerError(f"server {method} {path}: {_one_line(str(error))}") from None
        except httpx.TransportError as error:
            if self._http.base_url.scheme == "https" and _plain_http_answer(error):
                # No retry cures it: the server does not speak TLS on that port.
                raise ServerError(self._plain_http_problem(method, path)) from None
            problem = _one_line(f"{type(error).__name__}: {error}")
            raise _Retry(f"server {method} {path}", problem) from None

    def _plain_http_problem(self, method: str, path: str) -> str:
        base = self._http.base_url
        plain = str(base.copy_with(scheme="http")).rstrip("/")
        return (
            f"server {method} {path}: {str(base).rstrip('/')} answers in plain HTTP, not TLS "
            "(an --api-url without a scheme means https://): use --api-url "
            f"{plain} if that server has no TLS, or give it a certificate "
            "(prepsync serve --ssl-certfile/--ssl-keyfile, or a TLS reverse proxy)"
        )

    def _checked(
        self, method: str, path: str, response: httpx.Response, accept: tuple[int, ...]
    ) -> httpx.Response:
        status = response.status_code
        if 200 <= status < 300 or status in accept:
            return response
        if status == 429 or status >= 500:
            retry_after = _retry_after(response) if status in (429, 503) else None
            problem = _error_text(response)
            if status == 507 and DISK_FULL not in problem:  # a server that does not say it
                problem = f"{DISK_FULL}: {problem}"
            raise _Retry(f"server {method} {path}", f"{status} {problem}", retry_after)
        raise self._refusal(method, path, response)

    @staticmethod
    def _refusal(method: str, path: str, response: httpx.Response) -> ServerError:
        return ServerError(
            f"server {method} {path}: {response.status_code} {_error_text(response)}",
            status=response.status_code,
        )

    def _authorization(self) -> dict[str, str]:
        token = self._token
        if token is None or self._clock() > token.refresh_at:
            token = self._token = self._fetch_token()
        return {"Authorization": f"Bearer {token.value}"}

    def _fetch_token(self) -> _Token:
        started = self._clock()
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret.reveal(),
            "scope": SCOPE,
        }
        response = self._exchange("POST", TOKEN_PATH, {}, data=form)
        document = self._object("POST", TOKEN_PATH, self._checked("POST", TOKEN_PATH, response, ()))
        value, token_type = document.get("access_token"), document.get("token_type", "Bearer")
        if not isinstance(value, str) or not value or str(token_type).lower() != "bearer":
            raise ServerError(f"server POST {TOKEN_PATH}: answer has no bearer access_token")
        lifetime = document.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            return _Token(value, math.inf)  # no stated lifetime: kept until a 401
        # Refresh early enough that a token never expires between our check and the server's.
        return _Token(value, started + lifetime - min(60.0, 0.1 * lifetime))

    @staticmethod
    def _json(method: str, path: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ServerError(
                f"server {method} {path}: {response.status_code} answer is not JSON"
            ) from None

    def _object(self, method: str, path: str, response: httpx.Response) -> dict[str, Any]:
        document = self._json(method, path, response)
        if not isinstance(document, dict):
            raise ServerError(
                f"server {method} {path}: {response.status_code} answer is not a JSON object"
            )
        return document


class FileUpload:
    """One file going to a session, a request per :meth:`step`, resuming where the server's
    size says; usable while another thread still appends to the file.

    Until the writer is done (``written`` False) only whole chunks are sent, each with total
    ``*``, and only out of the bytes the file already has: the writer appends with write(2)
    and never rewrites a byte, so every byte below the size fstat reports is final. Once
    ``written``, the rest goes and the Content-Range states the total. Not thread-safe: one
    thread steps it (the writer only tells the stepping thread when it is done).
    """

    def __init__(
        self,
        api: ApiClient,
        session_id: str,
        path: Path,
        name: str | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
        pause: Callable[[float], None] | None = None,
    ) -> None:
        """``pause(seconds)``: how to wait before a retry (the client's sleep by default); one
        that raises ends the step at once (a sender being stopped)."""
        self.name = path.name if name is None else name
        self._api = api
        self._url = f"/api/sessions/{_q(session_id)}/files/{_q(self.name)}"
        try:
            stream = path.open("rb")
        except OSError as error:
            raise PrepsyncError(f"{path}: cannot read: {error.strerror or error}") from None
        self._source = _HashingReader(stream, path)
        self._progress = progress
        self._backoff = _Backoff(api._retry, pause or api._sleep, api._rng)
        self._asked = False  # whether the server was asked for its size yet
        self._arrived: int | None = None  # bytes the server holds; None: no file there
        self._best = -1

    def __enter__(self) -> FileUpload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._source.close()

    def sent(self, *, written: bool) -> bool:
        """Whether the server holds the whole file (only ever once it is ``written``)."""
        return written and self._asked and self._arrived == self._source.refresh()

    def ready(self, *, written: bool) -> bool:
        """Whether :meth:`step` has something to do now (a whole chunk, or the rest)."""
        size = self._source.refresh()
        if not self._asked:
            return True
        if written:
            return self._arrived != size
        return size - (self._arrived or 0) >= self._api._chunk_size

    def step(self, *, written: bool) -> None:
        """One request: the server's size first, then the next chunk; a failure is paused
        (the retry budget bounds a stall) and the server asked its size again."""
        if self._asked and not self.ready(written=written):
            return
        api, source = self._api, self._source
        try:
            if not self._asked:
                self._arrived = api._remote_size(self._url, self._backoff)
                self._asked = True
            else:
                self._arrived = api._put_next(self._url, source, self._arrived, written)
        except _Retry as failure:
            self._backoff.pause(failure)
            # Part of the chunk, all of it, or nothing may have arrived: ask.
            self._arrived = api._remote_size(self._url, self._backoff)
        arrived = self._arrived
        if arrived is not None and arrived > self._best:
            self._best = arrived
            self._backoff.reset()  # progress: the budget bounds a stall, not the whole file
            if self._progress is not None and written:
                self._progress(min(arrived, source.size), source.size)

    def receipt(self) -> FileReceipt:
        """Name, size and xxh3-128 of the whole file (call once it is sent)."""
        return FileReceipt(self.name, self._source.size, self._source.hexdigest())


class _HashingReader:
    """Reads a file at any offset for sending, and hashes each byte exactly once, in order.

    A resumed upload starts past bytes the server already has: those are read only to hash
    them. A chunk sent again after a failure is read again but not hashed again.
    """

    def __init__(self, stream: BinaryIO, path: Path) -> None:
        self._stream = stream
        self._path = path
        self.size = os.fstat(stream.fileno()).st_size
        self._digest = xxhash.xxh3_128()
        self._hashed = 0

    def refresh(self) -> int:
        """The file's size now (it may still be growing); returns it."""
        self.size = os.fstat(self._stream.fileno()).st_size
        return self.size

    def close(self) -> None:
        self._stream.close()

    def read_at(self, offset: int, count: int) -> bytes:
        self._hash_until(offset)
        data = self._read(offset, count)
        end = offset + len(data)
        if offset <= self._hashed < end:
            self._digest.update(memoryview(data)[self._hashed - offset :])
            self._hashed = end
        return data

    def hexdigest(self) -> str:
        self._hash_until(self.size)
        return self._digest.hexdigest()

    def _hash_until(self, end: int) -> None:
        while self._hashed < end:
            block = self._read(self._hashed, min(_HASH_BLOCK, end - self._hashed))
            self._digest.update(block)
            self._hashed += len(block)

    def _read(self, offset: int, count: int) -> bytes:
        self._stream.seek(offset)
        data = self._stream.read(count)
        if len(data) != count:
            raise PrepsyncError(f"{self._path}: the file shrank during the upload")
        return data
