"""A full extract that lost more than half its baseline's rows is legal but suspicious: the run
goes on, and says so in the log and in --report (issue: a truncated export wiping a table)."""

from __future__ import annotations

import json

from sites import Site

from prepsync.pipeline import (
    RunResult,
    TableResult,
    advance_baselines,
    baseline_rows,
)
from prepsync.request import PrepareRequest
from prepsync.staging import working_lock

ENTRIES_HEADER = b"id,name,ignored\n"


def report(site: Site, mode: str) -> tuple[dict[str, object], str]:
    path = site.root / f"{mode}.json"
    code, _, err = site.run(mode, "--report", str(path))
    assert code == 0, err
    return json.loads(path.read_text()), err


def entries(count: int) -> bytes:
    return ENTRIES_HEADER + b"".join(b"%d,n%d,x\n" % (i, i) for i in range(count))


def test_header_only_extract_after_a_full_one_warns_with_both_counts(site: Site) -> None:
    site.write("Entries.csv", entries(10))
    first, err = report(site, "complete")
    assert first["warnings"] == [] and "shrank" not in err
    site.write("Entries.csv", ENTRIES_HEADER)
    second, err = report(site, "complete")
    message = (
        "table Entries: 0 rows where the baseline has 10; it shrank by more than half: "
        "check that the export is complete"
    )
    assert second["warnings"] == [
        {
            "table": "Entries",
            "kind": "shrink",
            "rows": 0,
            "baseline_rows": 10,
            "message": message,
        }
    ]
    assert message in err
    # Legal: the empty table is still what is sent and what becomes the baseline.
    assert (site.previous / "Entries.sorted.csv").read_bytes() == b"id,name\n"


def test_incremental_full_extract_warns_too_and_half_is_not_more_than_half(site: Site) -> None:
    site.write("Entries.csv", entries(10))
    report(site, "complete")
    site.write("Entries.csv", entries(5))
    halved, _ = report(site, "incremental")
    assert halved["warnings"] == []
    site.write("Entries.csv", entries(2))
    shrunk, err = report(site, "incremental")
    assert [(w["table"], w["rows"], w["baseline_rows"]) for w in shrunk["warnings"]] == [
        ("Entries", 2, 5)
    ]
    assert "table Entries: 2 rows where the baseline has 5" in err


def test_first_run_and_change_files_do_not_warn(site: Site) -> None:
    site.write("Entries.csv", ENTRIES_HEADER)
    first, _ = report(site, "complete")  # no baseline yet
    assert first["warnings"] == []
    site.write("Entries.csv", entries(10))
    report(site, "complete")
    site.write("Entries.csv", b"command,id,name\ndelete,3,n3\n")  # a change file: no full table
    changes, _ = report(site, "incremental")
    assert changes["warnings"] == []


def test_baseline_row_count_is_recorded_with_the_baseline(site: Site) -> None:
    site.write("Entries.csv", entries(7))
    report(site, "complete")
    baseline = site.previous / "Entries.sorted.csv"
    sidecar = json.loads((site.previous / "Entries.rows.json").read_text())
    assert sidecar == {"rows": 7, "bytes": baseline.stat().st_size}
    assert baseline_rows(baseline) == 7


def test_without_a_trusted_sidecar_the_baseline_is_counted(site: Site) -> None:
    site.write("Entries.csv", entries(7))
    report(site, "complete")
    baseline = site.previous / "Entries.sorted.csv"
    sidecar = site.previous / "Entries.rows.json"
    sidecar.write_text(json.dumps({"rows": 1000, "bytes": baseline.stat().st_size + 1}))
    assert baseline_rows(baseline) == 7  # the baseline changed since: the count is stale
    sidecar.unlink()  # a baseline from before row counts were recorded
    assert baseline_rows(baseline) == 7
    site.write("Entries.csv", entries(3))
    shrunk, _ = report(site, "complete")
    assert [(w["rows"], w["baseline_rows"]) for w in shrunk["warnings"]] == [(3, 7)]


def test_a_run_rebuilt_from_the_session_journal_records_no_count(site: Site) -> None:
    # After a crash past the commit, the next run advances the baselines from a result rebuilt
    # from the journal, whose counts are unknown (no source): the sidecar says so.
    site.write("Entries.csv", entries(4))
    report(site, "complete")
    request = PrepareRequest(
        connector="AD", mode="complete", sources_dir=site.sources, working_dir=site.working
    )
    run = RunResult(
        request=request,
        tables=[
            TableResult(
                table="Entries",
                source="",
                outputs={"sorted": str(site.working / "Entries.sorted.csv")},
            )
        ],
        seconds=0.0,
        peak_rss=0,
    )
    with working_lock(site.working):
        advance_baselines(run)
    sidecar = json.loads((site.previous / "Entries.rows.json").read_text())
    assert sidecar["rows"] is None
    assert baseline_rows(site.previous / "Entries.sorted.csv") == 4


def test_incremental_counts_the_baseline_in_its_join_not_from_the_sidecar(site: Site) -> None:
    # The join's count is the baseline's, even where the sidecar says otherwise (a sidecar
    # that lies about a baseline of the same size would fool the count from it).
    site.write("Entries.csv", entries(10))
    report(site, "complete")
    sidecar = site.previous / "Entries.rows.json"
    recorded = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({"rows": 1, "bytes": recorded["bytes"]}))
    site.write("Entries.csv", entries(4))
    shrunk, _ = report(site, "incremental")
    assert [(w["rows"], w["baseline_rows"]) for w in shrunk["warnings"]] == [(4, 10)]
