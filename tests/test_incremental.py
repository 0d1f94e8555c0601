"""Incremental mode (REFERENCE §4): deltas, change files, and every refusal leaving the baseline."""

from __future__ import annotations

import pytest
from sites import Site


def baseline_of(site: Site, table: str = "Entries") -> bytes:
    return (site.previous / f"{table}.sorted.csv").read_bytes()


def test_delete_carries_baseline_values_and_unchanged_rows_are_left_out(site: Site) -> None:
    site.write("Entries.csv", b"id,name\n1,Ann\n2,Bob\n3,Cy\n")
    assert site.run("complete")[0] == 0
    site.write("Entries.csv", b"id,name\n3,Cy\n1,Ann\n")
    assert site.run("incremental")[0] == 0
    assert site.output("Entries.sorted.delta.csv") == b"command,id,name\ndelete,2,Bob\n"


def test_update_only_when_a_kept_value_differs(site: Site) -> None:
    site.write("Entries.csv", b"id,name,ignored\n1,Ann,a\n2,Bob,b\n")
    assert site.run("complete")[0] == 0
    # A change in an unmapped column, or in quoting only, is no change.
    site.write("Entries.csv", b'id,name,ignored\n1,"Ann",changed\n2,Bobby,b\n')
    assert site.run("incremental")[0] == 0
    assert site.output("Entries.sorted.delta.csv") == b"command,id,name\nupdate,2,Bobby\n"


@pytest.mark.parametrize(
    ("baseline", "problem"),
    [
        (b"id,name\n2,Bob\n1,Ann\n", "baseline is not sorted by key at line 3"),
        (b"id,name\n1,Ann\n1,Ann\n", "baseline has a duplicate key at line 3"),
        (b"id,name\n1,Ann\n2\n", "line 3: expected 2 fields, found 1"),
        (b"ID,Name,extra\n1,Ann,x\n", "baseline header differs from the kept columns"),
        (b"name,id\nAnn,1\n", "baseline header differs from the kept columns"),
    ],
)
def test_tampered_baseline_is_refused(site: Site, baseline: bytes, problem: str) -> None:
    assert site.run("complete")[0] == 0
    path = site.previous / "Entries.sorted.csv"
    path.write_bytes(baseline)
    before = site.snapshot()
    code, _, err = site.run("incremental")
    assert code == 1
    assert problem in err and "table Entries" in err
    assert "run a complete synchronization" in err
    assert site.snapshot() == before


def test_baseline_header_matches_case_insensitively(site: Site) -> None:
    assert site.run("complete")[0] == 0
    (site.previous / "Entries.sorted.csv").write_bytes(b"ID,NAME\n1,Ann\n")
    code, _, err = site.run("incremental")
    assert code == 0, err
    assert site.output("Entries.sorted.delta.csv") == b"command,id,name\ninsert,2,Bob\n"


def test_change_file_keeps_last_change_per_key(site: Site) -> None:
    assert site.run("complete")[0] == 0
    baseline = baseline_of(site)
    site.write(
        "Entries.csv",
        b"id,COMMAND,name\n2,Insert,Bo\n1,delete,\n2,UPDATE,Bob\n,merge,x\n3,MeRgE,Cy\n",
    )
    code, out, err = site.run("incremental", "--command-column", "command")
    assert code == 0, err
    # the command's header is "command" whatever the source spelled
    assert site.output("Entries.sorted.delta.csv") == (
        b"command,id,name\ndelete,1,\nupdate,2,Bob\nmerge,3,Cy\n"
    )
    assert site.output("Entries.duplicates.csv") == b"command,id,name\ninsert,2,Bo\n"
    assert site.output("Entries.nullpk.csv") == b"command,id,name\nmerge,,x\n"
    assert baseline_of(site) == baseline  # a change file never moves the baseline
    assert "Entries" in out


def test_change_file_run_writes_no_sorted_file(site: Site) -> None:
    site.write("Entries.csv", b"command,id,name\ninsert,1,a\n")
    site.write("Members.csv", b"group,member,command\ng1,u1,delete\n")
    code, _, err = site.run("incremental")
    assert code == 0, err
    assert site.output("Members.sorted.delta.csv") == b"command,group,member\ndelete,g1,u1\n"
    assert not (site.working / "Entries.sorted.csv").exists()
    assert not (site.previous / "Entries.sorted.csv").exists()


def test_invalid_command_names_file_and_line(site: Site) -> None:
    assert site.run("complete")[0] == 0
    before = site.snapshot()
    site.write("Entries.csv", b"command,id,name\ninsert,1,a\n\nupsert,2,b\n")
    code, _, err = site.run("incremental")
    assert code == 1
    assert "Entries.csv, line 4" in err
    assert "invalid command 'upsert' (expected insert, update, delete, merge or add)" in err
    assert site.snapshot() == before


def test_empty_command_in_an_incremental_change_file_names_file_and_line(site: Site) -> None:
    assert site.run("complete")[0] == 0
    before = site.snapshot()
    site.write("Entries.csv", b"command,id,name\ninsert,1,a\n,2,b\n")
    code, _, err = site.run("incremental")
    assert code == 1
    assert "Entries.csv, line 3 (byte 27): empty command" in err
    assert site.snapshot() == before


def test_custom_command_column(site: Site) -> None:
    site.write("Entries.csv", b"id,name,Op\n1,a,INSERT\n")
    site.write("Members.csv", b"Op,group,member\nmerge,g,u\n")
    code, _, err = site.run("incremental", "--command-column", "op")
    assert code == 0, err
    assert site.output("Entries.sorted.delta.csv") == b"command,id,name\ninsert,1,a\n"


def test_failure_in_one_table_leaves_every_baseline(site: Site) -> None:
    assert site.run("complete")[0] == 0
    before = site.snapshot()
    site.write("Entries.csv", b"id,name\n7,New\n")
    site.write("Members.csv", b"group,member\ng1,u1,extra\n")
    assert site.run("incremental")[0] == 1
    assert site.snapshot() == before
