"""Bounded connections: a slow or silent client costs one connection, never the server.

uvicorn (as installed: httptools' protocol) waits for a request's headers as long as the client
likes, and accepts connections until the process runs out of file descriptors; from then on
nothing is answered, not even by a request that would take a millisecond. Its
``limit_concurrency`` does not help: it answers 503 once the limit is reached, to everyone,
while the idle connections that reached it stay open. So this protocol adds:

* a **header deadline**: a request's headers must be complete ``read_timeout`` seconds after
  its first byte arrived (or after the connection was accepted): a client sending one byte a
  second cannot hold a connection for ever;
* a **body pause limit**: while the server waits for more of a request's body, a pause of
  ``read_timeout`` seconds without a byte closes the connection (not while the server itself
  stopped reading because the application has not consumed what it has);
* a **connection cap**: past ``max_connections`` open connections, the longest-waiting one that
  holds no request being served (still sending its headers, or idle between keep-alive
  requests) is closed to make room; when every connection holds a request being served, the
  new one is closed at once. The cap is kept below the process's file descriptor limit.

Idle keep-alive connections are closed after uvicorn's ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

# File descriptors kept for everything but client connections: databases, uploads being
# written, the listening socket, logs.
RESERVED_DESCRIPTORS = 64
MIN_CONNECTIONS = 16


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard limit; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # some containers refuse: keep what we have
            pass
    return soft


def connection_cap(requested: int, descriptor_limit: int) -> int:
    """``requested`` connections, or fewer so that they fit in ``descriptor_limit`` with room."""
    return max(MIN_CONNECTIONS, min(requested, descriptor_limit - RESERVED_DESCRIPTORS))


class _SheddingLog:
    """One warning per LOG_INTERVAL at most while connections are shed: a flood of slow
    clients must not become a flood of log lines."""

    LOG_INTERVAL = 10.0

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.unreported = 0
        self.last_report = -math.inf

    def note(self, action: str, open_connections: int) -> None:
        self.unreported += 1
        now = time.monotonic()
        if now - self.last_report >= self.LOG_INTERVAL:
            logger.warning(
                "%d connections open (limit %d): %s; %d shed since the last such line",
                open_connections,
                self.limit,
                action,
                self.unreported,
            )
            self.unreported = 0
            self.last_report = now


def bounded_protocol(read_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the bounds of this module's doc."""
    shedding = _SheddingLog(max_connections)

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read_timer: asyncio.TimerHandle | None = None
            # Since when this connection holds no request being served (None while one is):
            # such a connection is the first to go when the cap is reached.
            self.waiting_since: float | None = time.monotonic()

        # ------------------------------------------------------------------ connection
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm(self._header_deadline)
            if len(self.connections) > max_connections:
                self._make_room()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self.waiting_since = None
            super().connection_lost(exc)

        def _make_room(self) -> None:
            waiting: list[tuple[float, asyncio.BaseTransport]] = []
            for connection in self.connections:
                since: float | None = getattr(connection, "waiting_since", None)
                if connection is not self and since is not None:
                    transport: asyncio.BaseTransport = connection.transport
                    if not transport.is_closing():
                        waiting.append((since, transport))
            if waiting:
                since, transport = min(waiting, key=lambda pair: pair[0])
                transport.close()
                shedding.note(
                    f"closed the connection idle the longest ({time.monotonic() - since:.1f} s)",
                    len(self.connections),
                )
            else:
                shedding.note(
                    "refused a new one: each open one serves a request", len(self.connections)
                )
                self.transport.close()

        # ------------------------------------------------------------------ requests
        def on_message_begin(self) -> None:
            super().on_message_begin()
            # The first byte of a keep-alive connection's next request: its headers are due.
            if self._read_timer is None:
                self._arm(self._header_deadline)

        def on_headers_complete(self) -> None:
            self._disarm()
            self.waiting_since = None
            super().on_headers_complete()
            # Until on_message_complete, the body is awaited.
            self._arm(self._body_pause)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._arm(self._body_pause)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self.waiting_since = time.monotonic()

        # ------------------------------------------------------------------ timers
        def _arm(self, callback: Any) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(read_timeout, callback)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _header_deadline(self) -> None:
            self._read_timer = None
            if not self.transport.is_closing():
                logger.info(
                    "closed a connection from %s: headers incomplete after %g s",
                    _address(self.client),
                    read_timeout,
                )
                self.transport.close()

        def _body_pause(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            if self.flow.read_paused:  # we stopped reading, not the client: not its pause
                self._arm(self._body_pause)
                return
            logger.info(
                "closed a connection from %s: no byte of the request body for %g s",
                _address(self.client),
                read_timeout,
            )
            self.transport.close()

    return BoundedHttpToolsProtocol


def _address(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"
