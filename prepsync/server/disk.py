"""A full data directory: recognising it, answering it (507), and keeping the room to reclaim it.

An upload can fill the data directory. What frees it - cancelling the session, abandoning it
after ``--session-timeout``, a complete session superseding it - records the new state in
``sessions.sqlite3`` and then deletes the files, and SQLite needs a little room to record
anything (its write-ahead log grows). So those writes go through :func:`reclaiming`: when one
fails for want of room it first deletes the files the write makes garbage (when no one else
can be reading them), then gives up the *reserve* - a file of :data:`RESERVE_BYTES` the
server keeps in its data directory for exactly this - and tries again after each. The reserve
is made again once there is plenty of room (:meth:`DiskReserve.ensure`, every worker round).
New work (opening a session, a chunk, a commit) never uses the reserve: on a full disk it is
refused with 507 Insufficient Storage and a JSON error, and the agent retries.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from prepsync.protocol import DISK_FULL
from prepsync.server.http import error_response

logger = logging.getLogger(__name__)

RESERVE_NAME = "disk-reserve"
# Recording a cancellation or an abandonment writes a few 4 KiB pages to SQLite's log: this
# is room for hundreds of them.
RESERVE_BYTES = 1 << 20
# The reserve is made again only when this many times its size is free, so that making it
# never takes the last room a write in progress needs.
_RESERVE_HEADROOM = 4
_SQLSTATE_DISK_FULL = "53100"  # PostgreSQL's disk_full

T = TypeVar("T")


def is_disk_full(error: BaseException) -> bool:
    """True when ``error`` means the data directory (or the database's disk) has no room."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(error)
    return getattr(error, "sqlstate", None) == _SQLSTATE_DISK_FULL


class DiskReserve:
    """The file ``<data>/disk-reserve`` of ``size`` bytes, given up when a write that frees
    room would otherwise fail. Safe to use from the event loop and the worker thread."""

    def __init__(self, folder: Path, size: int = RESERVE_BYTES) -> None:
        self.path = folder / RESERVE_NAME
        self.size = size
        self._lock = threading.Lock()

    def ensure(self) -> bool:
        """Make the reserve if it is missing and there is plenty of room; True when it is
        there. Never raises: a reserve that cannot be made now is tried again later."""
        with self._lock:
            try:
                if self.path.stat().st_size >= self.size:
                    return True
            except FileNotFoundError:
                pass
            except OSError:
                return False
            partial = self.path.with_name(self.path.name + ".tmp")
            try:
                stats = os.statvfs(self.path.parent)
                if stats.f_bavail * stats.f_frsize < _RESERVE_HEADROOM * self.size:
                    return False
                descriptor = os.open(
                    partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
                )
                try:
                    _allocate(descriptor, self.size)
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                os.replace(partial, self.path)
            except OSError as error:
                with contextlib.suppress(OSError):
                    partial.unlink()
                logger.warning("cannot make the disk reserve %s: %s", self.path, error)
                return False
            return True

    def release(self) -> bool:
        """Delete the reserve; True when there was one to give up."""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            logger.warning("data directory full: the disk reserve was given up")
            return True


def _allocate(descriptor: int, size: int) -> None:
    """Real blocks, not a sparse file: a hole would free nothing when deleted."""
    try:
        os.posix_fallocate(descriptor, 0, size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        block = b"\xa5" * (64 << 10)
        for offset in range(0, size, len(block)):
            os.pwrite(descriptor, block[: size - offset], offset)


def reclaiming(
    write: Callable[[], T],
    reserve: DiskReserve | None,
    free_first: Callable[[], object] | None = None,
) -> T:
    """``write()``, a write that frees room (a cancellation, an abandonment), made to work on
    a full disk: when it fails for want of room, ``free_first()`` deletes the files it makes
    garbage, then the reserve is given up, and ``write`` is tried again after each step.
    A disk still full after both raises the last error (a 507 to a client)."""
    steps: list[Callable[[], object]] = []
    if free_first is not None:
        steps.append(free_first)
    if reserve is not None:
        steps.append(reserve.release)
    while True:
        try:
            return write()
        except Exception as error:
            if not is_disk_full(error) or not steps:
                raise
            logger.warning("data directory full while freeing room: %s", error)
        steps.pop(0)()


async def disk_full_handler(_request: Request, error: Exception) -> Response:
    """507 with a JSON error for a write the full disk refused; anything else goes on to the
    server-error handler (500, traceback logged)."""
    if not is_disk_full(error):
        raise error
    logger.warning("refused for want of room: %s", error)
    return error_response(507, f"{DISK_FULL}: {_reason(error)}")


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


def record_activity(touch: Callable[[], object]) -> None:
    """Record upload activity when there is room: a full disk must not make reading a file's
    size (how an agent resumes) fail. Without the record the session may be abandoned after
    ``--session-timeout``, which is what frees a disk filled by a stalled upload anyway."""
    try:
        touch()
    except Exception as error:
        if not is_disk_full(error):
            raise
        logger.warning("activity not recorded, the disk is full: %s", error)
