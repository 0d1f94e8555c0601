"""Tables cleansed at once: the same bytes as one by one, and a deterministic first error."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from prepsync import _cleanse, pipeline
from prepsync.config import TableSpec, Thresholds
from prepsync.errors import InputError
from prepsync.request import PrepareRequest, TableJob

SPECS = [
    TableSpec(name=f"t{i}", columns=("id", "v"), key=("id",), thresholds=Thresholds())
    for i in range(4)
]


def write_tables(sources: Path, bad: Collection[int] = ()) -> None:
    for i, spec in enumerate(SPECS):
        rows = "".join(f"{(j * 7919 + i) % 3000},{spec.name}-{j}\n" for j in range(6000))
        if i in bad:
            rows += "oops\n"  # a row with one field: the last line of the file
        (sources / f"{spec.name}.csv").write_text("id,v\n" + rows)


def run(root: Path, parallel: int) -> dict[str, bytes]:
    working = root / f"out{parallel}"
    request = PrepareRequest(
        connector="C",
        mode="complete",
        sources_dir=root,
        working_dir=working,
        memory_budget=1 << 20,
        parallel=parallel,
    )
    pipeline.run_offline(SPECS, request)
    return {p.name: p.read_bytes() for p in sorted(working.glob("*.csv"))}


def test_parallel_and_serial_runs_write_the_same_bytes(tmp_path: Path) -> None:
    write_tables(tmp_path)
    serial = run(tmp_path, 1)
    assert len(serial) == 12
    assert run(tmp_path, 3) == serial
    assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}


def test_first_error_in_table_order_is_reported(tmp_path: Path) -> None:
    write_tables(tmp_path, bad={1, 3})
    for _ in range(3):
        with pytest.raises(InputError) as failure:
            run(tmp_path, 4)
        assert failure.value.path.endswith("t1.csv")
        assert not list((tmp_path / "out4").glob("*.csv*"))
    assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread nice values: Linux")
def test_with_a_background_nice_the_largest_table_runs_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PREPSYNC_BACKGROUND_NICE=N (10 when unset): every table but the largest source runs on a
    thread of its own, N lower in priority; the largest, on the pool's thread, keeps the
    process's. The threads that carry on (the pool's, the caller's) keep theirs, and the bytes
    are those of a serial run. At 0, every table runs at the process's priority."""
    write_tables(tmp_path)
    largest = SPECS[2].name
    with (tmp_path / f"{largest}.csv").open("a") as grown:
        grown.write("".join(f"{3000 + j},extra-{j}\n" for j in range(2000)))
    serial = run(tmp_path, 1)
    seen: dict[str, tuple[int, int]] = {}
    real_stage_table = pipeline.stage_table

    def stage_table(job: TableJob, *args: Any, **kwargs: Any) -> Any:
        tid = threading.get_native_id()
        seen[job.spec.name] = (os.getpriority(os.PRIO_PROCESS, tid), tid)
        return real_stage_table(job, *args, **kwargs)

    monkeypatch.setattr(pipeline, "stage_table", stage_table)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    monkeypatch.setenv(pipeline.BACKGROUND_NICE_VARIABLE, "0")
    assert run(tmp_path, 2) == serial
    assert {name: nice for name, (nice, _) in seen.items()} == {s.name: base for s in SPECS}

    for setting, step in (
        (None, pipeline.DEFAULT_BACKGROUND_NICE),
        ("3", 3),
        ("x", pipeline.DEFAULT_BACKGROUND_NICE),
    ):
        seen.clear()
        if setting is None:
            monkeypatch.delenv(pipeline.BACKGROUND_NICE_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(pipeline.BACKGROUND_NICE_VARIABLE, setting)
        assert run(tmp_path, 2) == serial
        lowered = min(19, base + step)
        assert seen[largest][0] == base
        assert {name: nice for name, (nice, _) in seen.items() if name != largest} == {
            spec.name: lowered for spec in SPECS if spec.name != largest
        }, setting
        # Each background table had a thread of its own, gone with it.
        assert len({tid for _, tid in seen.values()}) == len(SPECS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}


def test_tables_start_largest_first(tmp_path: Path) -> None:
    """The pool starts tables by decreasing source size, ties (and missing files, whose error
    comes when they are read) in configuration order: the longest table never waits behind
    smaller ones for a thread."""
    sizes = {"a.csv": 10, "b.csv": 300, "c.csv": 10, "d.csv": 5000}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
    sources = [tmp_path / name for name in sizes] + [tmp_path / "missing.csv"]
    assert pipeline._largest_first(sources) == [3, 1, 0, 2, 4]
