"""`prepsync prepare` as a user runs it: exit status, messages, files left behind."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sites import Site

from prepsync import _cleanse
from prepsync.cli import main, prepare_main
from prepsync.sizes import parse_size


def test_complete_run_writes_outputs_summary_and_baseline(site: Site) -> None:
    code, out, err = site.run("complete", "--report", str(site.root / "run.json"))
    assert code == 0, err
    assert site.output("Entries.sorted.csv") == b"id,name\n1,Ann\n2,Bob\n"
    assert site.output("Entries.nullpk.csv") == b"id,name\n,Nobody\n"
    assert site.output("Entries.duplicates.csv") == b"id,name\n1,Ann again\n"
    assert site.output("Members.sorted.csv") == b"group,member\ng1,u1\ng1,u2\n"
    assert site.output("Members.duplicates.csv") == b"group,member\ng1,u2\n"
    assert (site.previous / "Entries.sorted.csv").read_bytes() == site.output("Entries.sorted.csv")
    assert "Entries" in out and "Members" in out
    report = json.loads((site.root / "run.json").read_text())
    entries = report["tables"][0]
    assert (entries["table"], entries["rows_read"], entries["kept"]) == ("Entries", 4, 2)
    assert (entries["null_keys"], entries["duplicates"]) == (1, 1)
    assert entries["peak_rss"] > 0 and report["peak_rss"] >= entries["peak_rss"]
    assert not list(site.working.glob(".prepsync-spill-*"))
    assert not list(site.working.glob("*.tmp-*"))


def test_second_console_script_is_the_same_command(site: Site) -> None:
    result = CliRunner().invoke(prepare_main, site.args())
    assert result.exit_code == 0, result.stderr
    assert site.output("Entries.sorted.csv") == b"id,name\n1,Ann\n2,Bob\n"


def test_mode_is_case_insensitive_and_incremental_writes_delta(site: Site) -> None:
    assert site.run("Complete")[0] == 0
    site.write("Entries.csv", b"id,name\n1,Ann B\n3,Cy\n")
    code, _, err = site.run("INCREMENTAL")
    assert code == 0, err
    assert site.output("Entries.sorted.delta.csv") == (
        b"command,id,name\nupdate,1,Ann B\ndelete,2,Bob\ninsert,3,Cy\n"
    )
    assert site.output("Members.sorted.delta.csv") == b"command,group,member\n"
    assert (site.previous / "Entries.sorted.csv").read_bytes() == b"id,name\n1,Ann B\n3,Cy\n"
    assert (site.previous / "Entries.sorted.csv.bak").read_bytes() == b"id,name\n1,Ann\n2,Bob\n"


BAD_INPUTS = [
    pytest.param(b"id,name\n1,a\n2,b,c\n", 3, "expected 2 fields, found 3", id="more-fields"),
    pytest.param(b"id,name\n1,a\n2\n", 3, "expected 2 fields, found 1", id="fewer-fields"),
    pytest.param(b'id,name\n1,a\n2,"open\n3,c\n', 3, "unterminated quote", id="unterminated"),
    pytest.param(b"id,name\n1,a\n2,caf\xe9\n", 3, "invalid UTF-8", id="latin1"),
    pytest.param(b"id,name\n1,a\n2,\xed\xa0\x80\n", 3, "invalid UTF-8", id="surrogate"),
    pytest.param(b'id,name\n1,"a"b\n', 2, "text after closing quote", id="after-quote"),
    pytest.param(b"id,other\n1,a\n", 1, "column 'name' is missing from the header", id="missing"),
    pytest.param(b"id,name,NAME\n1,a,b\n", 1, "duplicated header name 'NAME'", id="dup-header"),
    pytest.param(b"\xef\xbb\xbf\r\n\n", 1, "empty file (no header)", id="bom-blank-only"),
]


@pytest.mark.parametrize(("data", "line", "problem"), BAD_INPUTS)
def test_bad_input_fails_with_one_line_and_changes_nothing(
    site: Site, data: bytes, line: int, problem: str
) -> None:
    assert site.run("complete")[0] == 0
    before = site.snapshot()
    site.write("Entries.csv", data)
    code, _, err = site.run("complete")
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "Entries.csv" in err
    assert f"line {line}" in err and problem in err
    assert site.snapshot() == before  # no output replaced, no temp file, baseline as it was
    assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}


def test_missing_input_file(site: Site) -> None:
    (site.sources / "Members.csv").unlink()
    code, _, err = site.run()
    assert code == 1
    assert "Members.csv" in err and "file not found" in err
    assert not list(site.working.glob("*.csv*"))


def test_input_file_name_matches_case_insensitively(site: Site) -> None:
    (site.sources / "Entries.csv").rename(site.sources / "ENTRIES.CSV")
    code, _, err = site.run()
    assert code == 0, err
    assert site.output("Entries.sorted.csv") == b"id,name\n1,Ann\n2,Bob\n"


def test_header_only_file_is_an_empty_table(site: Site) -> None:
    site.write("Entries.csv", b"id,name\r\n")
    assert site.run()[0] == 0
    for suffix in ("sorted", "nullpk", "duplicates"):
        assert site.output(f"Entries.{suffix}.csv") == b"id,name\n"


def test_failure_in_last_table_replaces_no_output(site: Site) -> None:
    assert site.run()[0] == 0
    before = site.snapshot()
    site.write("Entries.csv", b"id,name\n9,Zed\n")
    site.write("Members.csv", b"group,member\ng1\n")
    assert site.run()[0] == 1
    assert site.snapshot() == before


def test_change_file_in_complete_mode_is_replayed_into_the_baseline(site: Site) -> None:
    site.write("Entries.csv", b"Command,id,name\nAdd,2,Bob\ninsert,1,Ann\ndelete,2,Bob\n,3,Cy\n")
    code, _, err = site.run("complete")
    assert code == 0, err
    assert site.output("Entries.sorted.csv") == b"id,name\n1,Ann\n3,Cy\n"
    assert site.output("Entries.duplicates.csv") == b"command,id,name\nmerge,2,Bob\ndelete,2,Bob\n"
    assert (site.previous / "Entries.sorted.csv").read_bytes() == b"id,name\n1,Ann\n3,Cy\n"


def test_incremental_without_baseline_asks_for_complete(site: Site) -> None:
    code, _, err = site.run("incremental")
    assert code == 1
    assert "table Entries" in err and "run a complete synchronization" in err
    assert not site.previous.exists()


def test_incremental_with_changed_header_asks_for_complete(site: Site) -> None:
    assert site.run()[0] == 0
    baseline = site.previous / "Entries.sorted.csv"
    baseline.write_bytes(b"id,other\n1,Ann\n")
    code, _, err = site.run("incremental")
    assert code == 1
    assert "baseline header differs" in err and "run a complete synchronization" in err
    assert baseline.read_bytes() == b"id,other\n1,Ann\n"


def test_offline_run_needs_config(site: Site) -> None:
    args = [a for a in site.args() if a not in ("--config", str(site.config))]
    result = CliRunner().invoke(main, ["prepare", *args])
    assert result.exit_code == 2
    assert "--config is required" in result.stderr


def test_configuration_error_is_one_line(site: Site) -> None:
    code, _, err = site.run("complete", "--connector", "HR")
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "HR" in err


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64MiB", 64 << 20),
        ("1GiB", 1 << 30),
        ("500MB", 500_000_000),
        ("1048576", 1 << 20),
        ("2 mib", 2 << 20),
        ("1.5GiB", 3 << 29),
    ],
)
def test_memory_budget_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "12 parsecs", "-1MiB", "1e6"])
def test_memory_budget_rejects_non_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_memory_budget_below_minimum_is_a_usage_error(site: Site) -> None:
    code, _, err = site.run("complete", "--memory-budget", "512KiB")
    assert code == 2 and "at least 1MiB" in err


def test_small_budget_gives_the_same_bytes(site: Site) -> None:
    rows = [f"{(i * 7919) % 5000},name {i}" for i in range(20000)]
    site.write("Entries.csv", ("id,name\n" + "\n".join(rows) + "\n").encode())
    assert site.run("complete", "--memory-budget", "1GiB")[0] == 0
    big = site.snapshot()
    code, _, err = site.run(
        "complete", "--memory-budget", "1MiB", "--report", str(site.root / "r.json")
    )
    assert code == 0, err
    report = json.loads((site.root / "r.json").read_text())
    assert report["tables"][0]["runs"] > 1  # really spilled
    small = site.snapshot()
    assert {k: v for k, v in small.items() if not k.endswith(".bak")} == {
        k: v for k, v in big.items() if not k.endswith(".bak")
    }


def test_log_level_controls_stderr(site: Site) -> None:
    code, _, err = site.run("complete", "--log-level", "Warning")
    assert code == 0 and err == ""
    code, _, err = site.run("complete", "--log-level", "debug")
    assert code == 0 and "Entries: 4 rows read" in err


def test_api_url_needs_client_credentials(site: Site) -> None:
    code, _, err = site.run("complete", "--api-url", "http://127.0.0.1:9")
    assert code == 2
    assert "--api-url needs --api-client-id and --api-secret" in err


def _powershell_rows(rows: list[list[str]]) -> str:
    """Rows as Windows PowerShell 5.1's Export-Csv writes them: every field quoted, CRLF."""
    return "".join(",".join(f'"{value}"' for value in row) + "\r\n" for row in rows)


ROWS = [["id", "name"], ["1", "Ann"], ["2", "Bob"]]
REFUSED_EXPORTS = [
    pytest.param(
        # bcp -w: UTF-16 LE without a byte-order mark, read as UTF-8 by default
        _powershell_rows(ROWS).encode("utf-16-le"),
        "line 1 (byte 0): not UTF-8: the file looks like UTF-16 LE without a byte-order mark "
        "(NUL bytes between its characters); read it with --encoding utf-16le",
        id="utf-16-le-no-bom",
    ),
    pytest.param(
        # Export-Csv without -NoTypeInformation: the type line, then the quoted header
        ("#TYPE System.Management.Automation.PSCustomObject\r\n" + _powershell_rows(ROWS)).encode(),
        "line 1 (byte 0): the first line is PowerShell type information ('#TYPE ...'), not a "
        "header: export with Export-Csv -NoTypeInformation (Windows PowerShell 5.1; PowerShell "
        "7 writes the line only when given -IncludeTypeInformation), or skip it with "
        "--skip-lines 1",
        id="type-line",
    ),
    pytest.param(
        # Excel's "CSV (Macintosh)": CR-only line ends, which once read as one header line
        b"id,name\rE1,Ann\rE2,Bob\r",
        "line 1 (byte 7): bare CR in the header line: the file has CR-only line ends",
        id="cr-only",
    ),
]


@pytest.mark.parametrize(("data", "message"), REFUSED_EXPORTS)
def test_refused_exports_name_the_cause_and_change_nothing(
    site: Site, data: bytes, message: str
) -> None:
    assert site.run("complete")[0] == 0
    before = site.snapshot()
    site.write("Entries.csv", data)
    for mode in ("complete", "incremental"):
        code, _, err = site.run(mode)
        assert code == 1
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("error: ") and f"Entries.csv, {message}" in err
        assert site.snapshot() == before  # no output replaced, baseline as it was


def test_a_lone_cr_at_the_end_of_the_file_is_a_value_byte(site: Site) -> None:
    site.write("Entries.csv", b"id,name\n2,Bob\n1,Ann\r")
    code, _, err = site.run("complete")
    assert code == 0, err
    assert site.output("Entries.sorted.csv") == b'id,name\n1,"Ann\r"\n2,Bob\n'


def test_a_one_column_null_key_row_is_written_as_two_quotes(site: Site) -> None:
    site.config.write_text(
        "<ConfigurationFile><EntityTypeMapping Identifier='E' Connector='AD' "
        "ConnectionTable='Entries'><Property Identifier='id' ConnectionColumn='id' "
        "IsPrimaryKey='true' /></EntityTypeMapping></ConfigurationFile>"
    )
    site.write("Entries.csv", b'id,other\n"",x\n1,y\n')
    code, _, err = site.run("complete")
    assert code == 0, err
    assert site.output("Entries.nullpk.csv") == b'id\n""\n'


def test_unread_header_names_may_be_empty_or_repeated(site: Site) -> None:
    site.write("Entries.csv", b"id,,name,x,X,\n2,a,Bob,b,c,d\n1,e,Ann,f,g,h\n")
    code, _, err = site.run("complete")
    assert code == 0, err
    assert site.output("Entries.sorted.csv") == b"id,name\n1,Ann\n2,Bob\n"


def test_a_duplicated_kept_name_is_named_with_its_byte(site: Site) -> None:
    site.write("Entries.csv", b'\xef\xbb\xbfid,name,"NAME"\n1,a,b\n')
    code, _, err = site.run("complete")
    assert code == 1
    assert "Entries.csv, line 1 (byte 11): duplicated header name 'NAME'" in err


def test_a_row_over_a_tables_share_of_the_budget_says_it_is_a_share(site: Site) -> None:
    """Tables cleansed at once split the budget: the error names the share, so that the user
    knows raising --memory-budget (or lowering --parallel) is the way out."""
    site.write("Entries.csv", b"id,name\n1," + b"x" * (600 << 10) + b"\n")
    code, _, err = site.run("complete", "--memory-budget", "16MiB", "--parallel", "2")
    assert code == 1
    assert (
        "Entries.csv, line 2 (byte 8): row too large for this table's 8 MiB share of the 16 MiB "
        "memory budget (split between 2 tables cleansed at once, --parallel): the longest "
        "allowed is 512 KiB (share / 16); unterminated quote?" in err
    )
    assert site.run("complete", "--memory-budget", "16MiB", "--parallel", "1")[0] == 0
