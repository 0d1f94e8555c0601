"""The progress line a terminal user watches: tables side by side, percent, live memory."""

from __future__ import annotations

import io

import pytest

from prepsync.report import ProgressBar


def test_progress_line_shows_each_table_and_live_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr("sys.stderr", screen)
    bar = ProgressBar()
    bar("entries", "read", 50, 200)
    bar("members", "write", 3, 3)
    last_line = screen.getvalue().split("\r")[-1]
    assert "entries: reading  25%" in last_line
    assert "members: writing 100%" in last_line
    assert " memory " in last_line and last_line.rstrip().endswith("B")
    bar.close()
    assert screen.getvalue().endswith("\r")  # the line is wiped, the summary starts clean
