"""Per-phase times in the engine's stats and in `--report`, so a slowdown names its phase."""

from __future__ import annotations

import json
from pathlib import Path

from sites import Site

from prepsync import _cleanse
from prepsync.config import TableSpec, Thresholds
from prepsync.pipeline import TableResult, prepare_table
from prepsync.request import TableJob

SPEC = TableSpec("T", ("id", "name"), ("id",), Thresholds())


def run_table(tmp_path: Path, budget: int, rows: int = 20_000) -> TableResult:
    source = tmp_path / "T.csv"
    lines = [f"{(i * 7919) % rows},name {i}" for i in range(rows)]
    source.write_text("id,name\n" + "\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return prepare_table(TableJob(source=source, spec=SPEC, memory_budget=budget), out)


def check_shape(result: TableResult) -> None:
    assert tuple(result.phase_seconds) == _cleanse.PHASE_NAMES
    assert tuple(result.phase_cpu_seconds) == _cleanse.PHASE_NAMES
    assert all(value >= 0 for value in result.phase_seconds.values())
    assert all(value >= 0 for value in result.phase_cpu_seconds.values())
    # Phases are exclusive slices of the table's time (which also covers the header check),
    # except that runs are sorted and spilled by a worker thread while the reader goes on, and
    # the final merge's outputs written by another while the merge goes on.
    seconds = result.phase_seconds
    overlapped = seconds["sort"] + seconds["spill"] + seconds["write"]
    assert sum(seconds.values()) - overlapped <= result.seconds
    assert seconds["sort"] + seconds["spill"] <= result.seconds
    assert seconds["write"] <= result.seconds


def test_spilling_run_times_every_phase(tmp_path: Path) -> None:
    result = run_table(tmp_path, budget=16 << 10)
    assert result.runs > 2 and result.merge_passes > 0
    check_shape(result)
    for phase in _cleanse.PHASE_NAMES:
        assert result.phase_seconds[phase] > 0, phase


def test_in_memory_run_has_no_spill_or_merge_time(tmp_path: Path) -> None:
    result = run_table(tmp_path, budget=64 << 20)
    assert result.runs == 0
    check_shape(result)
    assert result.phase_seconds["spill"] == result.phase_seconds["merge"] == 0
    assert result.phase_seconds["read"] > 0 and result.phase_seconds["sort"] > 0


def test_report_carries_phase_and_commit_times(site: Site) -> None:
    code, _, err = site.run("complete", "--report", str(site.root / "run.json"))
    assert code == 0, err
    report = json.loads((site.root / "run.json").read_text())
    assert 0 <= report["commit_seconds"] <= report["seconds"]
    for table in report["tables"]:
        assert set(table["phase_seconds"]) == set(_cleanse.PHASE_NAMES)
        assert set(table["phase_cpu_seconds"]) == set(_cleanse.PHASE_NAMES)
        assert sum(table["phase_seconds"].values()) <= table["seconds"]
