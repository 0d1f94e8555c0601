"""``GET /api/sessions/{id}/changes``: what a session changes, or would change if forced.

The changes are computed by the same diff that applies a session (:mod:`prepsync.server.diff`),
against the store as it is now, from the session's files (kept while it is queued, processing
or blocked). The answer is CSV: ``command`` then the columns of the table as the session
carries them (``insert``/``update``: the new values; ``delete``: the row as stored), in key
order.

Query: ``table`` (needed when the session carries several tables), ``command`` (``insert``,
``update`` or ``delete``), ``limit`` (rows per page) and ``after`` (the key of the last row of
the previous page, its values as one CSV record in key-column order, e.g. ``after=42`` or
``after=CN%3Dg%2Cx,CN%3Dm``). A page cut short by ``limit`` names the next ``after`` in the
``Prepsync-Next-After`` response header.

Reading them is an operator's action (a client of the server's operator profile allowed on the
session's connector; see guards.py): they are the values a session carries.
"""

from __future__ import annotations

import csv
from collections.abc import Generator, Iterator

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from prepsync.config import TableSpec
from prepsync.protocol import (
    BLOCKED,
    COMMAND_COLUMN,
    DELETE,
    DONE,
    INSERT,
    NEXT_AFTER_HEADER,
    PROCESSING,
    QUEUED,
    UPDATE,
)
from prepsync.server.context import state_of
from prepsync.server.diff import DataError
from prepsync.server.guards import authenticate, conflict, require_operator, session_of
from prepsync.server.http import ApiError, integer_parameter
from prepsync.server.session_files import table_of_file
from prepsync.server.sessions import Session
from prepsync.server.store import decode_key, encode_key, format_record

LIMIT_MAX = 1_000_000
_COMMANDS = (INSERT, UPDATE, DELETE)
# Sessions whose files the server still holds (a final session's files are deleted).
_WITH_FILES = (QUEUED, PROCESSING, BLOCKED)
_PIECE = 256 * 1024


def _table_of(
    session: Session, tables: dict[str, TableSpec], requested: str | None
) -> tuple[TableSpec, str | None]:
    """The requested table (or the only one carried) and its committed file; None when an
    incremental session leaves that table unchanged."""
    carried: dict[str, tuple[TableSpec, str]] = {}
    for entry in session.files or []:
        spec, _problem = table_of_file(entry["name"], session.mode, tables)
        if spec is not None:
            carried[spec.name.casefold()] = (spec, entry["name"])
    if requested is None:
        if len(carried) != 1:
            names = ", ".join(spec.name for spec, _name in carried.values()) or "none"
            raise ApiError(400, f"'table' is required: the session carries {names}")
        return next(iter(carried.values()))
    spec = tables.get(requested.casefold())
    if spec is None:
        raise ApiError(404, f"connector {session.connector!r} has no table {requested!r}")
    if requested.casefold() not in carried:
        return spec, None
    return carried[requested.casefold()]


def _after_key(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        values = next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration):
        raise ApiError(400, "'after' must be the key's values as one CSV record") from None
    if not values or not all(values):
        raise ApiError(400, "'after' must name every key value, none empty")
    return encode_key(values)


async def changes(request: Request) -> Response:
    client = authenticate(request)
    session = session_of(request, client)
    require_operator(request, client, "reading a session's changes")
    state = state_of(request)
    if session.files is None:
        raise conflict(session, f"a {session.state} session has no committed files to review")
    if session.state not in _WITH_FILES:
        raise conflict(
            session,
            f"a {session.state} session's files are gone; its changes were applied"
            if session.state == DONE
            else f"a {session.state} session's files are gone",
        )
    query = request.query_params
    command = query.get("command")
    if command is not None and command.lower() not in _COMMANDS:
        raise ApiError(400, f"'command' must be one of {', '.join(_COMMANDS)}")
    wanted = None if command is None else command.lower()
    limit = integer_parameter(request, "limit", 1, LIMIT_MAX)
    after = _after_key(query.get("after"))
    spec, file_name = _table_of(session, state.folded_tables(session.connector), query.get("table"))
    if file_name is None:  # an incremental session that leaves this table unchanged
        empty = format_record([COMMAND_COLUMN, *spec.columns]) + "\n"
        return Response(empty, media_type="text/csv; charset=utf-8")
    backend = state.backend
    path = state.sessions_dir / session.id / file_name

    def selected() -> Generator[tuple[str, bytes], None, None]:
        """(CSV line, key): the header first (its key empty), then the selected changes."""
        with backend.review(session, spec, path, after) as diff:
            yield format_record([COMMAND_COLUMN, *diff.header]) + "\n", b""
            for change_command, key, line, _values, stored_line in diff.changes:
                if wanted is not None and change_command != wanted:
                    continue
                text = line if change_command != DELETE else stored_line
                assert text is not None
                yield f"{change_command},{text}\n", key

    if limit is None:
        lines = selected()
        try:
            # Read before answering: a file that cannot be opened is a 422, not a cut stream.
            first = await anyio.to_thread.run_sync(lambda: next(lines))
        except DataError as error:
            raise ApiError(422, str(error)) from None
        return StreamingResponse(_pieces(first[0], lines), media_type="text/csv; charset=utf-8")

    page_size = limit

    def page() -> tuple[str, str | None]:
        lines = selected()
        taken = [next(lines)]
        for item in lines:  # the header, the page, and one more to know there are more
            taken.append(item)
            if len(taken) > page_size + 1:
                break
        lines.close()  # ends the snapshot now, not when the generator is collected
        more = len(taken) > page_size + 1
        if more:
            taken.pop()
        next_after = format_record(decode_key(taken[-1][1])) if more else None
        return "".join(line for line, _key in taken), next_after

    try:
        body, next_after = await anyio.to_thread.run_sync(page)
    except DataError as error:
        raise ApiError(422, str(error)) from None
    headers = {} if next_after is None else {NEXT_AFTER_HEADER: next_after}
    return Response(body, media_type="text/csv; charset=utf-8", headers=headers)


def _pieces(first: str, lines: Iterator[tuple[str, bytes]]) -> Iterator[bytes]:
    """The answer in pieces of about 256 KiB. A bad record further down the file cuts the
    stream short (the status was sent with the first piece): how a stream says it failed."""
    buffer = [first]
    size = len(first)
    for line, _key in lines:
        buffer.append(line)
        size += len(line)
        if size >= _PIECE:
            yield "".join(buffer).encode("utf-8")
            buffer.clear()
            size = 0
    yield "".join(buffer).encode("utf-8")
