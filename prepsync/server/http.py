"""HTTP plumbing shared by the endpoints: JSON errors, bounded request bodies, Content-Range."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

JSON_LIMIT = 1024 * 1024  # a commit lists one entry per table: far below this
JSON_DEPTH = 32  # a commit's body is 3 levels deep


class ApiError(Exception):
    """Answer ``{"error": message, **extra}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    extra: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return JSONResponse({"error": message, **(extra or {})}, status_code=status, headers=headers)


async def api_error_handler(_request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(error.status, error.message, error.extra, error.headers)


async def http_error_handler(_request: Request, error: Exception) -> Response:
    """Starlette's own errors (no route: 404, wrong method: 405) as JSON too."""
    assert isinstance(error, HTTPException)
    return error_response(error.status_code, str(error.detail), headers=error.headers)


async def server_error_handler(_request: Request, _error: Exception) -> Response:
    # The traceback goes to the log (uvicorn logs it); the client learns nothing internal.
    return error_response(500, "internal server error")


def check_declared_length(request: Request, limit: int) -> None:
    """413 at once when ``Content-Length`` announces more than ``limit`` bytes."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise ApiError(413, f"request body larger than {limit} bytes")


def declared_length(request: Request) -> int | None:
    """``Content-Length`` (None without one); 400 unless it is ASCII digits."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    value = ascii_integer(declared.strip())
    if value is None:
        raise ApiError(400, "invalid Content-Length")
    return value


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) more than ``limit`` bytes without reading past it."""
    check_declared_length(request, limit)
    pieces: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:  # chunked encoding: no Content-Length to check up front
            raise ApiError(413, f"request body larger than {limit} bytes")
        pieces.append(piece)
    return b"".join(pieces)


async def read_json_object(request: Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    body = await read_body(request, limit)
    try:
        document = json.loads(body)
    except RecursionError:  # the parser recurses per level: a deep body must not be a 500
        raise ApiError(400, f"request body is nested more than {JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "request body is not JSON") from None
    if not isinstance(document, dict):
        raise ApiError(400, "request body must be a JSON object")
    problem = _json_problem(document)
    if problem is not None:
        raise ApiError(400, f"request body {problem}")
    return document


def _json_problem(document: Any) -> str | None:
    """Why a parsed body is unfit for the endpoints, or None: nested deeper than JSON_DEPTH
    (nothing the API takes is), or a string holding a lone surrogate (JSON's ``"\\ud800"``),
    which is not Unicode text: it could be neither stored nor put in an answer."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > JSON_DEPTH:
            return f"is nested more than {JSON_DEPTH} levels"
        if isinstance(value, dict):
            pending.extend((key, depth) for key in value)
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "holds a lone surrogate: strings must be Unicode text"
    return None


# Parameters and headers that carry numbers take ASCII digits only: str.isdigit() and int()
# also take "²", "①" or "٣" (and int() accepts "1_000" and spaces), which are no numbers here.
_ASCII_INTEGER = re.compile(r"[0-9]{1,18}")


def ascii_integer(text: str) -> int | None:
    """The value of ``text`` when it is 1 to 18 ASCII digits, else None."""
    return int(text) if _ASCII_INTEGER.fullmatch(text) else None


def integer_parameter(request: Request, name: str, low: int, high: int) -> int | None:
    """Query parameter ``name`` as an integer from ``low`` to ``high``; None when absent;
    400 naming the parameter otherwise."""
    text = request.query_params.get(name)
    if text is None:
        return None
    value = ascii_integer(text)
    if value is None or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be an integer from {low} to {high}")
    return value


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int  # inclusive
    total: int | None  # None for "*"

    @property
    def length(self) -> int:
        return self.end - self.start + 1


_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18}|\*)")


def parse_content_range(value: str) -> ContentRange | None:
    """``bytes a-b/total`` (total may be ``*``) -> ContentRange; None when malformed."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    start, end = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if end < start or (total is not None and end >= total):
        return None
    return ContentRange(start, end, total)
