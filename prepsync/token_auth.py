"""The agent's bearer token, as an ``httpx.Auth``: where it is cached and refreshed.

``POST /connect/token`` with the client-credentials form, fetched before the first request
and cached. It is fetched again once less than ``min(60 s, 10 % of expires_in)`` of its life
remains (an answer without ``expires_in`` is kept until a 401), and once when a request
answers 401 (a token signed with a key the server no longer has, a clock jump): the request
goes again with the new token, and a second 401 is the answer the caller sees.

A failed token request is told like any other: :func:`prepsync.exchange.checked` makes a 429
or 5xx a :class:`prepsync.exchange.Retryable` (the whole request is then retried, token fetch
included) and any other refusal a ServerError naming ``POST /connect/token``.

Secrets never reach logs, exceptions or ``repr``: the secret is only in the token request's
form body, which httpx does not log; the token is only in a request header, which httpx does
not log either (its INFO line is method, URL and status).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import httpx

from prepsync.errors import ServerError
from prepsync.exchange import checked, object_of
from prepsync.protocol import SCOPE

logger = logging.getLogger("prepsync")

TOKEN_PATH = "/connect/token"


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
class Token:
    value: str
    refresh_at: float  # on the auth's clock

    def __repr__(self) -> str:
        return f"Token(refresh_at={self.refresh_at})"


class ClientCredentials(httpx.Auth):
    """OAuth client credentials against the server's token endpoint under ``base_url``."""

    requires_response_body = True  # the token answer is read in the flow
    requires_request_body = True  # a request sent again after a 401 is a copy of it

    def __init__(
        self,
        base_url: httpx.URL,
        client_id: str,
        secret: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``base_url`` ends with a slash (as ``httpx.Client.base_url`` does)."""
        self._token_url = base_url.join(TOKEN_PATH.lstrip("/"))
        self.client_id = client_id
        self._secret = _Secret(secret)
        self._clock = clock
        self._token: Token | None = None

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r})"

    @property
    def token(self) -> Token | None:
        """The cached token, None before the first request or after a 401."""
        return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield from self._authorize(request)
        response = yield request
        if response.status_code == 401:
            logger.info("server %s %s: 401; fetching a new token", request.method, request.url)
            self._token = None
            # A new request, not the first one changed: whoever saw the first keeps it as sent.
            again = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.content,
                extensions=request.extensions,
            )
            yield from self._authorize(again)
            yield again

    def _authorize(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._token
        if token is None or self._clock() > token.refresh_at:
            started = self._clock()
            answer = yield self._token_request(request)
            token = self._token = self._token_from(answer, started)
        request.headers["Authorization"] = f"Bearer {token.value}"

    def _token_request(self, request: httpx.Request) -> httpx.Request:
        """Sent with ``request``'s timeouts (a request built outside the client has none)."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._secret.reveal(),
            "scope": SCOPE,
        }
        timeout = request.extensions.get("timeout")
        extensions = {} if timeout is None else {"timeout": timeout}
        return httpx.Request("POST", self._token_url, data=form, extensions=extensions)

    @staticmethod
    def _token_from(response: httpx.Response, started: float) -> Token:
        document = object_of("POST", TOKEN_PATH, checked("POST", TOKEN_PATH, response))
        value, token_type = document.get("access_token"), document.get("token_type", "Bearer")
        if not isinstance(value, str) or not value or str(token_type).lower() != "bearer":
            raise ServerError(f"server POST {TOKEN_PATH}: answer has no bearer access_token")
        lifetime = document.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            return Token(value, math.inf)  # no stated lifetime: kept until a 401
        # Refresh early enough that a token never expires between our check and the server's.
        return Token(value, started + lifetime - min(60.0, 0.1 * lifetime))
