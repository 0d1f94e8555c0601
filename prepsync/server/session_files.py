"""A session's files on disk: which names a session may carry, writing at an offset, hashing,
removal once the session is final.

Invariant: a file is only ever created or written as ``<session directory>/<name>`` where the
session directory is ``<data>/sessions/<canonical GUID>`` and ``name`` passed
:func:`file_name_problem` (a plain name: no separator, no ``..``, no NUL or control character),
opened with ``O_NOFOLLOW`` so a planted symbolic link cannot redirect a write either.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import xxhash

from prepsync.config import TableSpec
from prepsync.protocol import upload_suffix

NAME_MAX_BYTES = 255  # the usual file-system limit for one path component
_HASH_BLOCK = 1024 * 1024


def file_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name to store under a session directory, or None."""
    if not name:
        return "file name is empty"
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        return f"file name is longer than {NAME_MAX_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "file name must not contain a path separator"
    if ".." in name:
        return "file name must not contain '..'"
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in name):
        return "file name must not contain NUL or control characters"
    return None


def table_of_file(
    name: str, mode: str, tables: Mapping[str, TableSpec]
) -> tuple[TableSpec | None, str | None]:
    """(table, None) for a file the session may carry, else (None, why not).

    ``tables`` maps the casefolded ConnectionTable to its spec: file names match tables
    case-insensitively, like every name in the configuration (REFERENCE §1).
    """
    problem = file_name_problem(name)
    if problem is not None:
        return None, problem
    suffix = upload_suffix(mode)
    if not name.endswith(suffix):
        return None, f"a {mode} session carries only <ConnectionTable>{suffix} files"
    spec = tables.get(name[: -len(suffix)].casefold())
    if spec is None:
        return None, f"{name[: -len(suffix)]!r} is not a table of the connector"
    return spec, None


def file_size(path: Path) -> int | None:
    """Bytes arrived so far, or None when nothing arrived."""
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except FileNotFoundError:
        return None


def open_for_write(path: Path) -> int:
    """A descriptor to write ``path`` at offsets; creates it (mode 0600) if needed."""
    return os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600
    )


def hash_and_sync(path: Path) -> tuple[int, str]:
    """(size, xxh3-128 hex digest) of the file, after making its content durable.

    fsync before the commit's 202: the agent advances its baselines on that answer, so the
    files must not vanish in a power cut afterwards.
    """
    digest = xxhash.xxh3_128()
    size = 0
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(descriptor)
        with os.fdopen(descriptor, "rb", closefd=False) as stream:
            while block := stream.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
    finally:
        os.close(descriptor)
    return size, digest.hexdigest()


def discard_files(sessions_dir: Path, session_id: str) -> None:
    """Remove a finished session's uploads (its id was checked to be a canonical GUID)."""
    shutil.rmtree(sessions_dir / session_id, ignore_errors=True)
