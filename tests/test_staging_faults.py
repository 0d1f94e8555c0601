"""Staged files under the faults the harness found: a rename between two links of one file
(which POSIX makes a silent no-op), and writes failing on a full disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from prepsync import staging


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("linked", ["new file and baseline", "baseline and its backup"])
def test_a_commit_between_links_of_one_file_leaves_no_temporary(
    tmp_path: Path, linked: str
) -> None:
    """A baseline advanced twice from the same output (on recovery, then by the run itself):
    the staged file, or the backup's temporary link, is the very file the name holds."""
    final = tmp_path / "T.sorted.csv"
    final.write_bytes(b"id\n1\n")
    staged = staging.StagedFiles(tmp_path)
    temp = staging.temp_name(final)
    if linked == "new file and baseline":
        os.link(final, temp)
    else:
        os.link(final, tmp_path / "T.sorted.csv.bak")
        temp.write_bytes(b"id\n2\n")
    expected = temp.read_bytes()
    staged.add(final, temp, backup=True)
    staged.commit()
    assert temporaries(tmp_path) == []
    assert final.read_bytes() == expected
    assert (tmp_path / "T.sorted.csv.bak").exists()


def no_space(fd: int, data: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_header_that_cannot_be_written_names_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = staging.StagedFiles(tmp_path)
    monkeypatch.setattr(staging.os, "write", no_space)
    with pytest.raises(OSError) as failure:
        staged.create(tmp_path / "T.sorted.csv", b"id\n")
    monkeypatch.undo()
    assert failure.value.strerror == f"writing {tmp_path / 'T.sorted.csv'}: No space left on device"
    staged.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_journal_that_cannot_be_written_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staging.os, "write", no_space)
    with pytest.raises(OSError, match="No space left on device"):
        staging.atomic_write_json(tmp_path / "journal.json", {"renames": []})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write may write part of the data (a filling disk, a signal): the rest follows."""
    real_write = os.write

    def one_byte_at_a_time(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:1]))

    monkeypatch.setattr(staging.os, "write", one_byte_at_a_time)
    staging.write_synced(tmp_path / "x.json", b'{"rows": 12}')
    monkeypatch.undo()
    assert (tmp_path / "x.json").read_bytes() == b'{"rows": 12}'
