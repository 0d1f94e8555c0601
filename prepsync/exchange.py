"""One request to the server, and the retries around it: what the agent's endpoints
(:mod:`prepsync.client`) and uploads (:mod:`prepsync.upload`) send through.

- **Retries.** Transport failures (connection refused or reset, timeouts, read and write
  errors), 429 and every 5xx are retried with exponential backoff and full jitter
  (``uniform(0, min(max_delay, first_delay * 2**n))``), or after ``Retry-After`` on 429/503
  (capped by ``max_delay``). An operation gives up with a :class:`ServerError` naming its last
  problem once the next pause would take its cumulated waiting past ``total_seconds``. Other
  4xx are not retried: the ServerError is one line, ``server <METHOD> <path>: <status> <server's
  "error" text>``.
- **Authorisation** is the ``httpx.Auth`` the exchange is given (the client's
  :class:`prepsync.token_auth.ClientCredentials`): a request this module sends carries a token,
  and a 401 is already the answer to a request sent again with a new one.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from prepsync.errors import ServerError
from prepsync.protocol import DISK_FULL
from prepsync.request import DEFAULT_RETRY_SECONDS

logger = logging.getLogger("prepsync")

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


@dataclass(frozen=True)
class RetryPolicy:
    # Give up once retrying would take the waiting past this.
    total_seconds: float = DEFAULT_RETRY_SECONDS
    first_delay: float = 0.5
    max_delay: float = 30.0


class Retryable(Exception):
    """One attempt failed in a way another attempt may not."""

    def __init__(self, request: str, problem: str, retry_after: float | None = None) -> None:
        super().__init__(f"{request}: {problem}")
        self.request = request  # "server METHOD path"
        self.problem = problem
        self.retry_after = retry_after


class Backoff:
    """The pauses of one operation, and the budget they draw on."""

    def __init__(
        self, policy: RetryPolicy, sleep: Callable[[float], None], rng: random.Random
    ) -> None:
        self._policy = policy
        self._sleep = sleep
        self._rng = rng
        self.retries = 0
        self.waited = 0.0

    def pause(self, failure: Retryable) -> None:
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


def one_line(text: str) -> str:
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


def error_text(response: httpx.Response) -> str:
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
        return one_line(text)
    return one_line(response.reason_phrase or response.text[:200])


def refusal(method: str, path: str, response: httpx.Response) -> ServerError:
    return ServerError(
        f"server {method} {path}: {response.status_code} {error_text(response)}",
        status=response.status_code,
    )


def checked(
    method: str, path: str, response: httpx.Response, accept: tuple[int, ...] = ()
) -> httpx.Response:
    """2xx or ``accept`` -> the response; Retryable for 429 and 5xx; ServerError otherwise."""
    status = response.status_code
    if 200 <= status < 300 or status in accept:
        return response
    if status == 429 or status >= 500:
        retry_after = _retry_after(response) if status in (429, 503) else None
        problem = error_text(response)
        if status == 507 and DISK_FULL not in problem:  # a server that does not say it
            problem = f"{DISK_FULL}: {problem}"
        raise Retryable(f"server {method} {path}", f"{status} {problem}", retry_after)
    raise refusal(method, path, response)


def json_of(method: str, path: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ServerError(
            f"server {method} {path}: {response.status_code} answer is not JSON"
        ) from None


def object_of(method: str, path: str, response: httpx.Response) -> dict[str, Any]:
    document = json_of(method, path, response)
    if not isinstance(document, dict):
        raise ServerError(
            f"server {method} {path}: {response.status_code} answer is not a JSON object"
        )
    return document


class Exchange:
    """Authorised requests under one base URL, each attempt or retried; not thread-safe
    beyond what httpx.Client is (one operation per thread)."""

    def __init__(
        self,
        base_url: str,
        auth: httpx.Auth,
        *,
        retry: RetryPolicy,
        timeout: float,
        transport: httpx.BaseTransport | None,
        sleep: Callable[[float], None],
        rng: random.Random,
    ) -> None:
        self.retry = retry
        self.sleep = sleep
        self._rng = rng
        # httpx joins "/api/..." under base_url's path, with or without a trailing slash.
        self._http = httpx.Client(
            base_url=base_url, auth=auth, timeout=httpx.Timeout(timeout), transport=transport
        )

    @property
    def base_url(self) -> httpx.URL:
        """With a trailing slash: relative paths join under it."""
        return self._http.base_url

    def close(self) -> None:
        self._http.close()

    def backoff(self, pause: Callable[[float], None] | None = None) -> Backoff:
        """A fresh retry budget; ``pause`` waits instead of the exchange's sleep."""
        return Backoff(self.retry, pause or self.sleep, self._rng)

    def call(
        self,
        method: str,
        path: str,
        *,
        backoff: Backoff | None = None,
        accept: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """A request, retried until it succeeds, is refused, or the budget is spent."""
        backoff = backoff if backoff is not None else self.backoff()
        while True:
            try:
                return self.send(method, path, accept=accept, **kwargs)
            except Retryable as failure:
                backoff.pause(failure)

    def send(
        self,
        method: str,
        path: str,
        *,
        accept: tuple[int, ...] = (),
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One attempt: 2xx or ``accept`` -> the response; Retryable when worth another
        attempt; ServerError otherwise."""
        request = self._http.build_request(method, path, headers=headers, **kwargs)
        try:
            response = self._http.send(request)
        except _PERMANENT_TRANSPORT_ERRORS as error:
            raise ServerError(f"server {method} {path}: {one_line(str(error))}") from None
        except httpx.TransportError as error:
            # The auth's token request may be the one that failed: name that one.
            method, path = self._request_named(error, request, method, path)
            if self._http.base_url.scheme == "https" and _plain_http_answer(error):
                # No retry cures it: the server does not speak TLS on that port.
                raise ServerError(self._plain_http_problem(method, path)) from None
            problem = one_line(f"{type(error).__name__}: {error}")
            raise Retryable(f"server {method} {path}", problem) from None
        return checked(method, path, response, accept)

    def _request_named(
        self, error: httpx.TransportError, request: httpx.Request, method: str, path: str
    ) -> tuple[str, str]:
        """The method and base-relative path of the request that failed: ``request``'s, or
        the one its auth sent first."""
        try:
            failed = error.request
        except RuntimeError:  # an error raised outside any request
            return method, path
        if failed.method == request.method and failed.url == request.url:  # it, or its repeat
            return method, path
        base = self._http.base_url.raw_path
        raw = failed.url.raw_path
        if not raw.startswith(base):
            return failed.method, raw.decode("ascii")
        return failed.method, "/" + raw[len(base) :].decode("ascii")

    def _plain_http_problem(self, method: str, path: str) -> str:
        base = self._http.base_url
        plain = str(base.copy_with(scheme="http")).rstrip("/")
        return (
            f"server {method} {path}: {str(base).rstrip('/')} answers in plain HTTP, not TLS "
            "(an --api-url without a scheme means https://): use --api-url "
            f"{plain} if that server has no TLS, or give it a certificate "
            "(prepsync serve --ssl-certfile/--ssl-keyfile, or a TLS reverse proxy)"
        )
