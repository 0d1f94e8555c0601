"""StagedFiles under interruption: whatever moment a Ctrl-C lands, discard() leaves no file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prepsync import staging


def test_ctrl_c_right_after_a_staged_file_is_opened_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def open_then_interrupted(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        os.close(fd)  # the descriptor would leak with the process; the file is what matters
        raise KeyboardInterrupt  # the signal lands before create() can record the file

    staged = staging.StagedFiles(tmp_path)
    staged.create(tmp_path / "first.csv", b"id\n")
    monkeypatch.setattr(staging.os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        staged.create(tmp_path / "second.csv", b"id\n")
    monkeypatch.undo()
    staged.discard()
    assert list(tmp_path.iterdir()) == []
