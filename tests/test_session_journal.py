"""A session journal (``<working>/.prepsync-session.json``) that prepsync did not write - valid
JSON of another shape, or not JSON at all - stops the run with one line saying what to do, not
a traceback, and before anything is sent."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sites import Site

from prepsync.cli import main
from prepsync.sync import SESSION_JOURNAL

SESSION = "0f8fad5b-d9cb-469f-a165-70867728950e"
GOOD = {"session": SESSION, "connector": "AD", "agent": "test", "mode": "incremental"}
GOOD_TABLE = {"table": "Entries", "sorted": None, "change_file": True}
FINGERPRINT = {"separator": ",", "command_column": "command", "files": []}


def run_online(site: Site, journal: bytes) -> tuple[int, str]:
    """An online run on a site whose working directory holds ``journal``; the URL leads
    nowhere (port 9, discard), so a run that got past the journal fails loudly elsewhere."""
    site.working.mkdir(parents=True, exist_ok=True)
    (site.working / SESSION_JOURNAL).write_bytes(journal)
    arguments = [
        "prepare",
        *site.args("incremental"),
        "--api-url",
        "http://127.0.0.1:9",
        "--api-client-id",
        "agent",
        "--api-secret",
        "secret",
        "--api-retry-seconds",
        "0",
    ]
    result = CliRunner().invoke(main, arguments)
    # A traceback would leave the exception itself here; a clean error is click's exit.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.output


WRONG_SHAPES = [
    ({}, 'no "session"'),
    ([], "a JSON list where an object belongs"),
    ("text", "a JSON str where an object belongs"),
    (5, "a JSON int where an object belongs"),
    (None, "a JSON NoneType where an object belongs"),
    ({"session": 5}, 'no "connector"'),
    ({**GOOD, "tables": None, "session": 5}, '"session" is 5'),
    ({**GOOD, "tables": None, "session": ""}, '"session" is ""'),
    ({**GOOD, "tables": None, "session": "../../connect/token"}, '"session" is'),
    ({**GOOD, "tables": None, "connector": ["AD"]}, '"connector" is ["AD"]'),
    ({**GOOD, "tables": None, "mode": "sometimes"}, '"mode" is "sometimes"'),
    ({**GOOD, "tables": None, "mode": 1}, '"mode" is 1'),
    ({**GOOD, "tables": None, "agent": {}}, '"agent" is {}'),
    ({**GOOD, "tables": {"Entries": 1}}, '"tables" is {"Entries": 1}'),
    ({**GOOD, "tables": [1]}, '"tables"[0] is not an object'),
    ({**GOOD, "tables": [{**GOOD_TABLE, "table": 3}]}, '"tables"[0] has no "table"'),
    ({**GOOD, "tables": [{"table": "Entries", "change_file": True}]}, 'no "sorted"'),
    ({**GOOD, "tables": [{**GOOD_TABLE, "sorted": 7}]}, 'no "sorted"'),
    ({**GOOD, "tables": [{**GOOD_TABLE, "change_file": "yes"}]}, 'no "change_file"'),
    ({**GOOD, "tables": None, "committed": "yes"}, '"committed" is "yes"'),
    ({**GOOD, "tables": None, "sources": []}, '"sources" is not an object'),
    ({**GOOD, "tables": None, "sources": {"files": []}}, '"sources" has no "separator"'),
    (
        {
            **GOOD,
            "tables": None,
            "sources": {**FINGERPRINT, "files": [{"table": "T", "size": "1"}]},
        },
        '"sources"["files"][0] has no "size"',
    ),
    ({**GOOD, "tables": None, "files": {}}, '"files" is not a list'),
    (
        {**GOOD, "tables": None, "files": [{"name": "a", "size": True, "xxh3_128": "0"}]},
        '"files"[0]',
    ),
]


@pytest.mark.parametrize(("content", "problem"), WRONG_SHAPES)
def test_a_journal_of_another_shape_is_one_error_line(
    site: Site, content: object, problem: str
) -> None:
    status, output = run_online(site, json.dumps(content).encode())
    assert status == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    line = lines[0]
    assert line.startswith("error: session journal "), line
    assert str(site.working / SESSION_JOURNAL) in line
    assert "not one prepsync writes" in line and problem in line, line
    assert "delete the file" in line and "complete synchronization" in line, line
    assert "Traceback" not in output
    assert (site.working / SESSION_JOURNAL).exists()  # left for the operator to look at


@pytest.mark.parametrize(
    "garbled",
    [b"", b'{"session": "0f8fad5b', b"\xff\xfe{}", b"{}}", b"\x00" * 16],
    ids=["empty", "truncated", "not-utf8", "trailing", "zeros"],
)
def test_a_garbled_journal_says_what_to_do(site: Site, garbled: bytes) -> None:
    status, output = run_online(site, garbled)
    assert status == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"error: session journal {site.working / SESSION_JOURNAL} is ")
    assert "garbled" in lines[0]
    assert "delete the file" in lines[0] and "complete synchronization" in lines[0]


def test_a_journal_prepsync_wrote_gets_past_the_check(site: Site) -> None:
    """The shape check accepts what prepsync writes: the run goes on to ask the server about
    the session (which cannot be reached here)."""
    entry = {**GOOD, "tables": [GOOD_TABLE]}
    status, output = run_online(site, json.dumps(entry).encode())
    assert status == 1, output
    assert "session journal" not in output
    assert "connect/token" in output, output


@pytest.mark.parametrize(
    "content",
    [b"{}", b"[]", b'{"renames": [{"temp": 1}]}', b'{"renames": ', b"\xff"],
    ids=["empty-object", "list", "wrong-entry", "truncated", "not-utf8"],
)
def test_a_rename_journal_of_another_shape_is_one_error_line(site: Site, content: bytes) -> None:
    """The rename journal (``.prepsync-journal.json``) that finishes an interrupted local
    commit is checked the same way, offline runs included."""
    site.working.mkdir(parents=True, exist_ok=True)
    (site.working / ".prepsync-journal.json").write_bytes(content)
    result = CliRunner().invoke(main, ["prepare", *site.args("complete")])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    # (before it, the log's warning that an interrupted commit is being finished)
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: rename journal {site.working / '.prepsync-journal.json'}")
    assert "delete the file" in lines[0] and "complete synchronization" in lines[0]
