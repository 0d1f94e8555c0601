"""Upload endpoints (REFERENCE §7): a file's chunks, its size so far, the commit that verifies them.

What is checked and written on disk is in :mod:`prepsync.server.session_files`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from prepsync.protocol import DISK_FULL, OPEN
from prepsync.server.context import ServerState, state_of
from prepsync.server.disk import is_disk_full, record_activity
from prepsync.server.guards import authenticate, conflict, owned_session_of
from prepsync.server.http import (
    ApiError,
    check_declared_length,
    declared_length,
    parse_content_range,
    read_json_object,
)
from prepsync.server.session_files import (
    file_name_problem,
    file_size,
    hash_and_sync,
    open_for_write,
    table_of_file,
)
from prepsync.server.sessions import Session

_HEX = frozenset("0123456789abcdef")


def _upload_path(request: Request, session: Session) -> tuple[str, Path]:
    """The checked file name and its path inside the session's directory (400 if unfit)."""
    name: str = request.path_params["name"]
    state = state_of(request)
    if request.method == "PUT":
        _spec, problem = table_of_file(name, session.mode, state.folded_tables(session.connector))
    else:
        problem = file_name_problem(name)
    if problem is not None:
        raise ApiError(400, problem)
    return name, state.sessions_dir / session.id / name


async def file_status(request: Request) -> Response:
    """GET /api/sessions/{id}/files/{name} -> {"name", "size"}: bytes arrived so far."""
    client = authenticate(request)
    session = owned_session_of(request, client)
    db, _worker = state_of(request).running()
    name, path = _upload_path(request, session)
    size = file_size(path)
    if size is None:
        raise ApiError(404, f"no file {name!r} in this session")
    record_activity(lambda: db.touch(session.id))
    return JSONResponse({"name": name, "size": size})


async def upload(request: Request) -> Response:
    """PUT /api/sessions/{id}/files/{name} with ``Content-Range: bytes a-b/total``.

    The body is written at offset a, streamed (never held whole). Writing the same chunk again
    is harmless; a chunk starting past the bytes arrived (a gap) is refused with 416 and the
    current size. Without Content-Range the body is the whole file.
    """
    client = authenticate(request)
    session = owned_session_of(request, client)
    state = state_of(request)
    db, _worker = state.running()
    if session.state != OPEN or session.id in state.sealed:
        raise conflict(session, f"session is {session.state}: uploads are closed")
    name, path = _upload_path(request, session)
    check_declared_length(request, state.max_body)
    header = request.headers.get("content-range")
    whole_file = header is None
    if header is None:
        start, length = 0, None
    else:
        content_range = parse_content_range(header)
        if content_range is None:
            raise ApiError(400, "Content-Range must be 'bytes first-last/total' (total or *)")
        start, length = content_range.start, content_range.length
        total = content_range.total if content_range.total is not None else content_range.end + 1
        if total > state.max_file_size:
            raise ApiError(413, f"file larger than {state.max_file_size} bytes")
        if length > state.max_body:
            raise ApiError(413, f"chunk larger than {state.max_body} bytes")
        declared = declared_length(request)
        if declared is not None and declared != length:
            raise ApiError(400, "Content-Length differs from the Content-Range")
    async with state.session_held(session.id, exclusive=False):
        # Read again under the lock: a commit or cancel of another process may have settled
        # the session since it was read above.
        latest = db.get(session.id)
        if latest is None or latest.state != OPEN:
            raise conflict(
                latest or session, f"session is {(latest or session).state}: uploads are closed"
            )
        current = file_size(path) or 0
        if start > current:
            raise ApiError(
                416,
                f"chunk starts at byte {start} but only {current} bytes arrived",
                extra={"name": name, "size": current},
                headers={"Content-Range": f"bytes */{current}"},
            )
        written = await _write_body(request, state, session, path, start, length, whole_file)
    state.events.received(written)
    record_activity(lambda: db.touch(session.id))
    if length is not None and written != length:
        raise ApiError(400, f"body has {written} bytes, Content-Range says {length}")
    return JSONResponse({"name": name, "size": file_size(path) or 0})


async def _write_body(
    request: Request,
    state: ServerState,
    session: Session,
    path: Path,
    start: int,
    length: int | None,
    whole_file: bool,
) -> int:
    """Stream the body into ``path`` at ``start``; returns the bytes written.

    pwrite on the event loop thread, piece by piece (pieces are small): together with the
    seal check before each piece this is atomic with respect to a commit on the same loop.
    """
    limit = length if length is not None else state.max_body
    try:
        descriptor = open_for_write(path)
    except FileNotFoundError:  # the directory went with a cancellation since the state check
        raise conflict(session, "session was cancelled") from None
    written = 0
    try:
        async for piece in request.stream():
            if not piece:
                continue
            if session.id in state.sealed:
                raise conflict(session, "session was committed or cancelled during the upload")
            if written + len(piece) > limit:
                if length is None:
                    raise ApiError(413, f"request body larger than {limit} bytes")
                raise ApiError(400, f"body is longer than the Content-Range's {length} bytes")
            view = memoryview(piece)
            while view:
                count = os.pwrite(descriptor, view, start + written)
                view = view[count:]
                written += count
        if whole_file:
            os.ftruncate(descriptor, written)
    except ClientDisconnect:
        pass  # what arrived is kept: the agent asks for the size and resumes from there
    except OSError as error:
        if is_disk_full(error):
            raise ApiError(507, f"{DISK_FULL}: cannot store the chunk") from None
        raise ApiError(500, f"cannot store the chunk: {error.strerror or error}") from None
    finally:
        os.close(descriptor)
    return written


def _commit_entries(document: dict[str, Any]) -> list[dict[str, Any]]:
    files = document.get("files")
    if not isinstance(files, list):
        raise ApiError(400, "'files' must be an array")
    entries: list[dict[str, Any]] = []
    for index, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise ApiError(400, f"files[{index}] must be an object")
        name, size, digest = entry.get("name"), entry.get("size"), entry.get("xxh3_128")
        if not isinstance(name, str):
            raise ApiError(400, f"files[{index}].name must be a string")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ApiError(400, f"files[{index}].size must be a non-negative integer")
        if not isinstance(digest, str) or len(digest) != 32 or not set(digest.lower()) <= _HEX:
            raise ApiError(400, f"files[{index}].xxh3_128 must be 32 hexadecimal digits")
        entries.append({"name": name, "size": size, "xxh3_128": digest.lower()})
    return entries


async def commit(request: Request) -> Response:
    """POST /api/sessions/{id}/commit: verify every listed file, then queue (202).

    A repeated commit answers 200 with the current state; a session cancelled before it was
    committed answers 409. Files uploaded but not listed are ignored.
    """
    client = authenticate(request)
    session = owned_session_of(request, client)
    state = state_of(request)
    db, worker = state.running()
    entries = _commit_entries(await read_json_object(request))
    lock = state.commit_locks.setdefault(session.id, asyncio.Lock())
    # Across processes too: two commits of the session never both verify, and no chunk is
    # written between the hash and the queueing.
    async with lock, state.session_held(session.id, exclusive=True):
        current = db.get(session.id)
        assert current is not None
        if current.state != OPEN:
            if current.files is None:  # never committed: cancelled (or abandoned) first
                raise conflict(current, f"session is {current.state}")
            return JSONResponse(current.to_json())
        # A long verification is activity, not abandonment.
        record_activity(lambda: db.touch(session.id))
        tables = state.folded_tables(session.connector)
        seen: set[str] = set()
        for entry in entries:
            spec, problem = table_of_file(entry["name"], session.mode, tables)
            if spec is None:
                raise ApiError(422, f"{entry['name']}: {problem}", extra={"file": entry["name"]})
            if spec.name.casefold() in seen:
                raise ApiError(
                    422,
                    f"{entry['name']}: table {spec.name} listed twice",
                    extra={"file": entry["name"]},
                )
            seen.add(spec.name.casefold())
        state.sealed.add(session.id)
        try:
            await anyio.to_thread.run_sync(_verify, state.sessions_dir / session.id, entries)
        except OSError as error:
            # Most likely the files went with a cancellation (a complete session opened).
            current = db.get(session.id)
            assert current is not None
            if current.state != OPEN:
                raise conflict(current, f"session is {current.state}") from None
            state.sealed.discard(session.id)
            if is_disk_full(error):
                raise ApiError(507, f"{DISK_FULL}: cannot verify the uploads") from None
            raise ApiError(500, f"cannot read the uploads: {error.strerror or error}") from None
        except BaseException:
            state.sealed.discard(session.id)
            raise
        try:
            committed_now = db.commit(session.id, entries)
        except BaseException:  # a full disk (507): uploads reopen, a repeat commit verifies
            state.sealed.discard(session.id)
            raise
        if not committed_now:
            # Cancelled while we verified (a complete session opened): say so.
            current = db.get(session.id)
            assert current is not None
            raise conflict(current, f"session is {current.state}")
        state.commit_locks.pop(session.id, None)
    worker.wake()
    committed = db.get(session.id)
    assert committed is not None
    state.events.committed(committed, entries)
    return JSONResponse(committed.to_json(), status_code=202)


def _verify(directory: Path, entries: list[dict[str, Any]]) -> None:
    """Size and xxh3-128 of each listed file (422 naming the first that differs); durable."""
    for entry in entries:
        name = entry["name"]
        path = directory / name
        size = file_size(path)
        if size is None:
            raise ApiError(422, f"{name}: not uploaded", extra={"file": name, "size": 0})
        if size != entry["size"]:  # checked first: hashing reads the whole file
            raise ApiError(
                422,
                f"{name}: {size} bytes arrived, commit says {entry['size']}",
                extra={"file": name, "size": size},
            )
        _size, digest = hash_and_sync(path)  # the same size: the session is sealed
        if digest != entry["xxh3_128"]:
            raise ApiError(
                422,
                f"{name}: xxh3_128 differs (server has {digest})",
                extra={"file": name, "xxh3_128": digest},
            )
    # The directory entries too, so the files are there after a power cut.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
