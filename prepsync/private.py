"""Files and folders prepsync writes are readable by their owner only, whatever the umask.

They hold identity data (exports and what is derived from them, uploaded files, the server's
store), so other users of the host must not read them. Files are created 0600 and the folders
prepsync creates 0700. A mode given to ``open()`` or ``mkdir()`` is masked by the umask, which
only ever removes bits: asking for 0600 or 0700 gives at most that, whatever the umask. The
helpers here are for what cannot be asked that way: SQLite (which creates 0644 minus the
umask), copies (``shutil.copyfile``), folders created along a path (``Path.mkdir(parents=True)``
gives the parents 0777 minus the umask), and files that an older version created with a wider
mode and that are opened again rather than replaced.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700

# SQLite's companions of a database file. SQLite gives them the database file's own mode
# (whatever the umask), so a database created 0600 keeps them 0600; older ones are fixed here.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def make_dirs(path: Path) -> None:
    """``mkdir -p`` where every folder created is 0700; existing folders keep their mode
    (they are the user's: a data or export folder is not ours to change)."""
    if path.is_dir():
        return
    if path.parent != path:
        make_dirs(path.parent)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    os.chmod(path, DIR_MODE)  # a umask removing owner bits would leave it unusable


def restrict(path: Path) -> None:
    """Make an existing file 0600 (a copy, or one an older version created wider)."""
    os.chmod(path, FILE_MODE)


def prepare_sqlite(path: Path) -> None:
    """Before SQLite opens ``path``: create it empty and 0600 if missing (SQLite reads an
    empty file as an empty database), and bring it and its companions to 0600 if an older
    version created them wider."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
    finally:
        os.close(descriptor)
    for suffix in SQLITE_COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", FILE_MODE)
