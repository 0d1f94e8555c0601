"""Ctrl-C: spill files, temporary outputs and native buffers are all released."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from sites import entity_config, prepare_command

from prepsync import _cleanse, pipeline, staging
from prepsync.config import TableSpec, Thresholds
from prepsync.request import PrepareRequest

SPEC = TableSpec(name="T", columns=("id", "v"), key=("id",), thresholds=Thresholds())


def write_rows(path: Path, rows: int) -> None:
    body = "".join(f"{(i * 7919) % rows:08d},value {i}\n" for i in range(rows))
    path.write_text("id,v\n" + body)


@pytest.mark.parametrize(
    ("phase", "after"),
    [
        ("write", 1),  # after spilling: runs exist on disk now
        # In the final merge, once the outputs' writer thread runs (maybe mid-write): the
        # first progress call that finds it (after intermediate merges, if any).
        ("write", 0),
        ("read", 20),  # while reading: runs written, one likely being sorted by the worker
    ],
)
def test_keyboard_interrupt_mid_run_cleans_up(tmp_path: Path, phase: str, after: int) -> None:
    sources, working = tmp_path / "src", tmp_path / "out"
    sources.mkdir()
    write_rows(sources / "T.csv", 200_000)
    calls: list[str] = []
    spilled: list[Path] = []
    interrupted: list[str] = []

    def interrupt(table: str, current: str, done: int, total: int) -> None:
        calls.append(current)
        writer_running = current == "write" and _cleanse.live_counters()["threads"] == 1
        if (after and calls.count(phase) == after) or (not after and writer_running):
            spilled.extend(working.rglob("run-*"))
            interrupted.append(current)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        request = PrepareRequest(
            connector="C",
            mode="complete",
            sources_dir=sources,
            working_dir=working,
            memory_budget=1 << 20,
        )
        pipeline.run_offline([SPEC], request, progress=interrupt)
    assert "read" in calls
    assert spilled  # the interrupt came with run files to remove
    assert interrupted == [phase]  # not the end of the run
    assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}
    assert sorted(p.name for p in working.iterdir()) == [staging.LOCK]


@pytest.mark.slow
def test_sigint_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    sources, working = tmp_path / "src", tmp_path / "out"
    sources.mkdir()
    write_rows(sources / "T.csv", 1_500_000)
    (tmp_path / "conf.xml").write_text(entity_config("C", {"T": ("id", "v")}))
    process = subprocess.Popen(
        prepare_command(tmp_path / "conf.xml", sources, working, "--memory-budget", "1MiB"),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until the run has spilled
        if any(p.is_dir() and any(p.iterdir()) for p in working.glob(".prepsync-spill-*")):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the run never spilled")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in working.iterdir()) == [staging.LOCK]
