"""Tables cleansed at once: the same bytes as one by one, and a deterministic first error."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest

from prepsync import _cleanse, pipeline
from prepsync.config import TableSpec, Thresholds
from prepsync.errors import InputError
from prepsync.request import PrepareRequest

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
