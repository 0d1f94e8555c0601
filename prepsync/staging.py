"""Durability: how a run makes files visible, survives a crash, and keeps one run per folder.

- :class:`StagedFiles` writes files under temporary names and makes a whole set visible at once
  through a rename journal; :func:`recover` finishes a commit that a crash interrupted.
- :func:`atomic_write_json` replaces a small JSON file so that a crash leaves the old or the new
  content, never a mix or nothing (the rename itself is made durable by :func:`fsync_dir`).
- :func:`working_lock` allows one run per working directory, which is what makes removing a
  killed run's leftovers (:func:`remove_leftovers`) safe.
- :func:`crash_point` is where tests SIGKILL the process to prove every step recoverable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prepsync.errors import UsageError
from prepsync.private import FILE_MODE, make_dirs, restrict

log = logging.getLogger("prepsync")

JOURNAL = ".prepsync-journal.json"
LOCK = ".prepsync.lock"


class StagedFiles:
    """Files written under temporary names and made visible together.

    commit() flushes every file, then writes a journal listing the renames (atomically: that
    write is the commit point), performs them and deletes the journal. A crash before the
    journal exists changes nothing visible; a crash after it is finished by :func:`recover`
    at the start of the next run. So a set of files (all of a run's outputs, or every table's
    baseline) is replaced all together or not at all.
    """

    def __init__(self, journal_dir: Path) -> None:
        self.journal = journal_dir / JOURNAL
        self._files: list[tuple[Path, Path, int | None]] = []
        self._backups: set[Path] = set()
        self._lock = threading.Lock()

    def create(self, final: Path, header: bytes) -> int:
        temp = temp_name(final)
        # Listed before it exists: a Ctrl-C landing between the open and the listing would
        # otherwise leave a temporary file that discard() does not know of. Tables are staged
        # from several threads, hence the lock around the slot.
        with self._lock:
            slot = len(self._files)
            self._files.append((final, temp, None))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        with self._lock:
            self._files[slot] = (final, temp, fd)
        write_all(fd, header, final)
        return fd

    def add(self, final: Path, temp: Path, *, backup: bool = False) -> None:
        """Stage an already written (and flushed) file; backup keeps the replaced one as .bak."""
        self._files.append((final, temp, None))
        if backup:
            self._backups.add(final)

    def close(self) -> None:
        """Flush every file to disk: a rename must never expose a file still in the cache only."""
        for i, (final, temp, fd) in enumerate(self._files):
            if fd is not None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._files[i] = (final, temp, None)

    def commit(self) -> None:
        self.close()
        renames = [
            {"temp": str(temp), "final": str(final), "backup": final in self._backups}
            for final, temp, _ in self._files
        ]
        atomic_write_json(self.journal, {"renames": renames})
        crash_point("committed")
        _apply_journal(self.journal)
        self._files.clear()

    def discard(self) -> None:
        for _, temp, fd in self._files:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                temp.unlink()
        self._files.clear()


def temp_name(final: Path) -> Path:
    return final.with_name(f"{final.name}.tmp-{os.getpid()}")


def _apply_journal(journal: Path) -> None:
    """Perform the journal's renames; safe to run again after a crash at any point in it."""
    renames = _read_renames(journal)
    folders = {journal.parent}
    for rename in renames:
        temp, final = Path(rename["temp"]), Path(rename["final"])
        folders.add(final.parent)
        if not temp.exists():
            continue  # renamed before the crash
        if rename["backup"] and final.exists():
            # final is still the old generation here, even when this step is being redone.
            backup = final.with_name(final.name + ".bak")
            backup_temp = temp_name(backup)
            with contextlib.suppress(FileNotFoundError):
                backup_temp.unlink()
            os.link(final, backup_temp)
            _replace(backup_temp, backup)
        _replace(temp, final)
        crash_point("renamed")
    for folder in folders:
        fsync_dir(folder)
    journal.unlink()
    fsync_dir(journal.parent)


def _read_renames(journal: Path) -> list[dict[str, Any]]:
    """The journal's renames, checked whole. It is written atomically, so anything else
    (garbled, another shape) was not written by prepsync: one error saying what to do, since
    the files it named may be of two generations."""
    renames: object = None
    try:
        data = json.loads(journal.read_bytes().decode("utf-8"))
    except ValueError as error:
        problem: str | None = f"not JSON: {error}"
    else:
        problem = None
        renames = data.get("renames") if isinstance(data, dict) else None
        if not isinstance(renames, list) or not all(
            isinstance(item, dict)
            and isinstance(item.get("temp"), str)
            and isinstance(item.get("final"), str)
            and isinstance(item.get("backup"), bool)
            for item in renames
        ):
            problem = 'not a "renames" list of "temp", "final" and "backup"'
    if problem is not None:
        raise UsageError(
            f"rename journal {journal} is not one prepsync writes ({problem}); check that no "
            "prepsync run uses this working directory, delete the file, and run a complete "
            "synchronization (the outputs and baselines it named may be of two runs)"
        )
    assert isinstance(renames, list)
    return renames


def _replace(temp: Path, final: Path) -> None:
    """os.replace(), and temp gone afterwards. When both names are links of one file (a
    baseline advanced twice from the same output: on recovery, then by the run) rename() does
    nothing and succeeds (POSIX), which would leave temp behind; final already holds the data.
    """
    os.replace(temp, final)
    with contextlib.suppress(FileNotFoundError):
        if os.path.samefile(temp, final):
            temp.unlink()


def write_all(fd: int, data: bytes, final: Path) -> None:
    """Write all of ``data`` (os.write may write part of it on a filling disk); an error names
    the file it was for (os.write's own error names none)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as error:
        raise OSError(error.errno, f"writing {final}: {error.strerror}") from None


def recover(working_dir: Path) -> bool:
    """Finish a commit that a crash interrupted; True if there was one."""
    journal = working_dir / JOURNAL
    if not journal.exists():
        return False
    log.warning("finishing the commit of an interrupted run (%s)", journal)
    _apply_journal(journal)
    return True


_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Tests kill the process here (SIGKILL: no cleanup runs) to prove that every step is
    recoverable. PREPSYNC_CRASH_AT is ``name`` (first time) or ``name:N`` (N-th time)."""
    wanted = os.environ.get("PREPSYNC_CRASH_AT")
    if not wanted:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    point, _, count = wanted.partition(":")
    if point == name and _crash_hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_held_locks: set[Path] = set()  # working directories whose lock this process holds


@contextlib.contextmanager
def working_lock(working_dir: Path) -> Iterator[None]:
    """One run at a time per working directory, held once per run by its entry point.

    Taking it first finishes a commit that a crashed run left (:func:`recover`), so a holder
    always sees whole generations of files, and may remove a killed run's leftovers.
    """
    make_dirs(working_dir)
    key = working_dir.resolve()
    if key in _held_locks:
        raise RuntimeError(f"working_lock({working_dir}) is already held by this process")
    fd = os.open(working_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another prepsync run is using {working_dir}") from None
        _held_locks.add(key)
        try:
            recover(working_dir)
            yield
        finally:
            _held_locks.discard(key)
    finally:
        os.close(fd)


def require_lock(working_dir: Path) -> None:
    """Functions that change a working directory's files call this: they run inside a run's
    :func:`working_lock`, never beside another run."""
    if working_dir.resolve() not in _held_locks:
        raise RuntimeError(f"{working_dir}: call this inside staging.working_lock()")


def remove_leftovers(*folders: Path) -> None:
    """Temporary files and spill folders of killed runs (only called under the lock, after
    recover(), when nothing can still need them)."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(".prepsync-spill-") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            elif ".tmp-" in entry.name and entry.is_file():
                with contextlib.suppress(OSError):
                    entry.unlink()


@contextlib.contextmanager
def spill_directory(working_dir: Path) -> Iterator[Path]:
    """A private directory for sorted runs, gone afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=".prepsync-spill-", dir=working_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON: written to a temporary name, flushed, renamed, and
    the rename flushed too (without the directory fsync a crash could undo the rename)."""
    temp = temp_name(path)
    write_synced(temp, json.dumps(data).encode("utf-8"))
    os.replace(temp, path)
    fsync_dir(path.parent)


def write_synced(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, flushed to disk. On failure (a full disk) nothing is
    left and the error names the file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        write_all(fd, data, path)
        try:
            os.fsync(fd)
        except OSError as error:
            raise OSError(error.errno, f"flushing {path}: {error.strerror}") from None
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link when both sit on one file system (outputs are only ever replaced by
    rename, never rewritten in place, so the linked inode never changes), else a copy."""
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        restrict(target)  # copyfile creates it 0666 minus the umask
        with open(target, "rb") as copied:
            os.fsync(copied.fileno())


def fsync_dir(directory: Path) -> None:
    """Make renames and creations in ``directory`` durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
