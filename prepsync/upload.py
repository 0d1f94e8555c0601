"""The resumable upload of one session file (``PUT``/``GET /api/sessions/{id}/files/{name}``).

An upload asks the server how many bytes it holds, then sends the rest in ``chunk_size``
chunks with ``Content-Range: bytes a-b/total`` (``a-b/*`` for the whole chunks sent while the
file is still being written), always continuing from the size the server reports: after each
chunk, the size in its answer; after a failure or a 416 (a gap: the server lost bytes it had
acknowledged), the size a new GET reports. The server is the truth: if it holds more bytes
than the file, a file of at most one chunk is sent again whole (a PUT without Content-Range
replaces the file), a longer one is an error. An empty file is a PUT without Content-Range and
with an empty body (a Content-Range cannot describe zero bytes). The retry budget restarts
whenever the server holds more of the file than ever before, so a huge upload over a flaky link
is bounded per stall, not in total.

The xxh3-128 of the receipt covers the whole local file: bytes the server already has are read
locally to hash them, and every byte is hashed exactly once, in order. Resuming assumes the
bytes on the server are this file's; if they are not (another file of that name sent earlier
in the session), the commit's hash check refuses it with a 422.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import httpx
import xxhash

from prepsync.errors import PrepsyncError, ServerError
from prepsync.exchange import Exchange, Retryable, error_text, object_of

_HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileReceipt:
    name: str
    size: int
    xxh3_128: str  # hex digest of the whole file


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
        exchange: Exchange,
        session_id: str,
        path: Path,
        name: str | None = None,
        *,
        chunk_size: int,
        progress: Callable[[int, int], None] | None = None,
        pause: Callable[[float], None] | None = None,
    ) -> None:
        """``pause(seconds)``: how to wait before a retry (the exchange's sleep by default); one
        that raises ends the step at once (a sender being stopped)."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be > 0")
        self.name = path.name if name is None else name
        self._exchange = exchange
        self._chunk_size = chunk_size
        self._url = f"/api/sessions/{quote(session_id, safe='')}/files/{quote(self.name, safe='')}"
        try:
            stream = path.open("rb")
        except OSError as error:
            raise PrepsyncError(f"{path}: cannot read: {error.strerror or error}") from None
        self._source = _HashingReader(stream, path)
        self._progress = progress
        self._backoff = exchange.backoff(pause)
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
        return size - (self._arrived or 0) >= self._chunk_size

    def step(self, *, written: bool) -> None:
        """One request: the server's size first, then the next chunk; a failure is paused
        (the retry budget bounds a stall) and the server asked its size again."""
        if self._asked and not self.ready(written=written):
            return
        source = self._source
        try:
            if not self._asked:
                self._arrived = self._remote_size()
                self._asked = True
            else:
                self._arrived = self._put_next(self._arrived, written)
        except Retryable as failure:
            self._backoff.pause(failure)
            # Part of the chunk, all of it, or nothing may have arrived: ask.
            self._arrived = self._remote_size()
        arrived = self._arrived
        if arrived is not None and arrived > self._best:
            self._best = arrived
            self._backoff.reset()  # progress: the budget bounds a stall, not the whole file
            if self._progress is not None and written:
                self._progress(min(arrived, source.size), source.size)

    def receipt(self) -> FileReceipt:
        """Name, size and xxh3-128 of the whole file (call once it is sent)."""
        return FileReceipt(self.name, self._source.size, self._source.hexdigest())

    def _remote_size(self) -> int | None:
        """Bytes of the file the server holds; None when it has none (404)."""
        response = self._exchange.call("GET", self._url, backoff=self._backoff, accept=(404,))
        if response.status_code == 404:
            return None
        return self._reported_size("GET", response)

    def _put_next(self, arrived: int | None, written: bool) -> int:
        """Send what comes next; returns the bytes the server then holds. ``written``: the
        file is complete (its size is the total); else only whole chunks go, total ``*``."""
        url, source = self._url, self._source
        if written and arrived is None and source.size == 0:
            return self._put_whole(0)
        if written and arrived is not None and arrived > source.size:
            return self._put_whole(arrived)
        start = arrived or 0
        data = source.read_at(start, min(self._chunk_size, source.size - start))
        total = str(source.size) if written else "*"
        headers = {"Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}"}
        response = self._exchange.send("PUT", url, accept=(416,), content=data, headers=headers)
        if response.status_code == 416:
            # The server lost bytes since it told us its size (a restore, a crash before a
            # flush). Retried like a failure: the next GET says where to resume, and a server
            # that keeps losing what it accepted runs out the budget instead of looping.
            raise Retryable(f"server PUT {url}", f"416 {error_text(response)}")
        held = self._reported_size("PUT", response)
        if held < start + len(data):  # acknowledged, yet not kept: never loop on it unpaused
            raise Retryable(
                f"server PUT {url}", f"holds {held} bytes after bytes up to {start + len(data)}"
            )
        return held

    def _put_whole(self, arrived: int) -> int:
        """A PUT without Content-Range: the body replaces the file (empty, or too long there)."""
        url, source = self._url, self._source
        if source.size > self._chunk_size:
            raise ServerError(
                f"server PUT {url}: the server holds {arrived} bytes, more than the file's "
                f"{source.size}: it is another file; open a new session"
            )
        data = source.read_at(0, source.size)
        response = self._exchange.send("PUT", url, content=data)
        held = self._reported_size("PUT", response)
        if held != source.size:
            raise ServerError(
                f"server PUT {url}: holds {held} bytes after a {source.size}-byte PUT"
            )
        return held

    def _reported_size(self, method: str, response: httpx.Response) -> int:
        size = object_of(method, self._url, response).get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ServerError(f"server {method} {self._url}: answer has no valid 'size'")
        return size


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
