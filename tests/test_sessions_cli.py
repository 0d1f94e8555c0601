"""`prepsync sessions list|show|changes|force|cancel` against a real `prepsync serve` process."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from serverutil import (
    CLIENT,
    HR_SECRET,
    OPERATOR,
    OPERATOR_SECRET,
    SECRET,
    Agent,
    Export,
    ServerProcess,
    config_xml,
    latest_session,
    mock_api,
)

from prepsync.cli import main
from prepsync.client import ApiClient
from prepsync.operator import write_changes

SESSION = "0f8fad5b-d9cb-469f-a165-70867728950e"


class Operator:
    """`prepsync sessions ...` in process (CliRunner), talking to the server over HTTP; with
    the operator's client (Profile Administrator) unless told otherwise."""

    def __init__(
        self, server: ServerProcess, client: str = OPERATOR, secret: str = OPERATOR_SECRET
    ) -> None:
        self.server, self.client, self.secret = server, client, secret

    def run(self, *arguments: str, url: str | None = None) -> tuple[int, str, str]:
        options = ["--api-url", url or self.server.url, "--api-client-id", self.client]
        result = CliRunner().invoke(
            main,
            ["sessions", *arguments, *options, "--api-retry-seconds", "0"],
            env={"PREPSYNC_API_SECRET": self.secret},
        )
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Agent, int]]:
    """MaximumDeletedLines=3; a complete load done, then an incremental deleting 5: blocked.
    Yields the server, the agent and how many rows the complete load inserted."""
    root = tmp_path_factory.mktemp("operator")
    config = root / "server.xml"
    config.write_text(config_xml(max_deleted=3))
    server = ServerProcess.in_folder(root, config)
    server.start()
    try:
        agent, export = Agent(root / "agent", server), Export(seed=7)
        export.write(agent.sources)
        assert agent.run("complete").returncode == 0
        loaded = len(export.entries) + len(export.members)
        export.next_day(deletes=5)
        export.write(agent.sources)
        assert agent.run("incremental").returncode == 3
        yield server, agent, loaded
    finally:
        server.stop()


def blocked_session(server: ServerProcess) -> str:
    (held,) = [s["id"] for s in server.sessions() if s["state"] == "blocked"]
    return held


def test_list_shows_state_mode_agent_age_changes_and_reason(
    site: tuple[ServerProcess, Agent, int],
) -> None:
    server, _agent, loaded = site
    held = blocked_session(server)
    code, out, err = Operator(server).run("list", "--connector", "AD")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["session", "state", "mode", "agent", "age", "changes", "reason"]
    assert rows[0].startswith(held)  # newest first
    assert rows[0].split()[1:4] == ["blocked", "incremental", "e2e"]
    assert re.fullmatch(r"\d+[smhd]", rows[0].split()[4])  # age
    assert re.search(r" \+\d+ ~8 -\d+", rows[0])  # the 8 updated entries
    assert "MaximumDeletedLines" in rows[0]
    assert rows[-1].split()[1:4] == ["done", "complete", "e2e"]
    # The complete load, first of all: every entry and membership inserted.
    assert f" +{loaded} ~0 -0" in rows[-1]
    code, out, _err = Operator(server).run("list", "--connector", "AD", "--limit", "1")
    assert code == 0 and len(out.splitlines()) == 2


def test_show_gives_per_table_counts_and_the_threshold_crossed(
    site: tuple[ServerProcess, Agent, int],
) -> None:
    server, _agent, _loaded = site
    held = blocked_session(server)
    code, out, err = Operator(server).run("show", held)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"session {held}"
    assert "  state      blocked" in lines
    assert f"  agent      e2e (client {CLIENT})" in lines
    table_header = next(line for line in lines if line.startswith("table"))
    assert table_header.split()[:4] == ["table", "inserted", "updated", "deleted"]
    entries = next(line for line in lines if line.startswith("ADExport_entries")).split()
    assert entries[1:4] == ["6", "8", "5"]  # Export.next_day: 6 added, 8 changed, 5 deleted
    crossed = lines[lines.index("thresholds crossed:") + 1 :]
    assert crossed and "MaximumDeletedLines" in crossed[0]


def test_errors_are_one_line_and_exit_1(site: tuple[ServerProcess, Agent, int]) -> None:
    server, _agent, _loaded = site
    held = blocked_session(server)
    operator = Operator(server)
    unknown = "0f8fad5b-d9cb-469f-a165-70867728950e"
    for (code, out, err), expected in [
        (operator.run("show", unknown), "404 unknown session"),
        (operator.run("force", unknown), "404 unknown session"),
        (operator.run("list", "--connector", "NOPE"), "404 unknown connector 'NOPE'"),
        (Operator(server, secret="wrong").run("show", held), "401 invalid_client"),
        (Operator(server, client="hr-only", secret=HR_SECRET).run("show", held), "403"),
        (operator.run("show", held, url="ftp://host"), "--api-url 'ftp://host'"),
        (operator.run("show", held, url=f"http://127.0.0.1:{_closed_port()}"), "gave up"),
    ]:
        assert code == 1, (expected, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert expected in err
        assert "Traceback" not in err and OPERATOR_SECRET not in err and out == ""
    # Settling a session that is not blocked is refused by the server, not half done.
    done_session = next(s["id"] for s in server.sessions() if s["state"] == "done")
    code, _out, err = operator.run("force", done_session)
    assert code == 1 and "409 only a blocked session can be forced; it is done" in err


def test_review_with_an_agents_credentials_says_an_operator_is_needed(
    site: tuple[ServerProcess, Agent, int],
) -> None:
    """The agent whose session was blocked cannot force, cancel or review it with its own
    client; the error says what is needed, in one line."""
    server, _agent, _loaded = site
    held = blocked_session(server)
    agent = Operator(server, client=CLIENT, secret=SECRET)
    for arguments, action in [
        (("force", held), "forcing a session"),
        (("cancel", held), "cancelling this session"),
        (("changes", held, "--table", "ADExport_entries"), "reading a session's changes"),
    ]:
        code, out, err = agent.run(*arguments)
        assert code == 1 and out == "", err
        assert err.startswith(f"error: {action} needs an operator's credentials ")
        assert err.count("\n") == 1 and "403" in err and "operator profile" in err
        assert SECRET not in err
    # It still lists the connector's sessions and reads its own.
    assert agent.run("list", "--connector", "AD")[0] == 0
    code, out, err = agent.run("show", held)
    assert code == 0 and "  state      blocked" in out, err
    assert server.wait(held, ("blocked",)) == "blocked"  # nothing was settled


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_cancel_and_force_settle_sessions(tmp_path: Path) -> None:
    """Its own test (and server): it changes what the other tests look at."""
    config = tmp_path / "server.xml"
    config.write_text(config_xml(max_deleted=3))
    server = ServerProcess.in_folder(tmp_path, config)
    server.start()
    try:
        agent, export = Agent(tmp_path / "agent", server), Export(seed=9)
        export.write(agent.sources)
        assert agent.run("complete").returncode == 0
        export.next_day(deletes=5)
        export.write(agent.sources)
        assert agent.run("incremental").returncode == 3
        held = latest_session(server)
        export.next_day(deletes=1)
        export.write(agent.sources)
        assert agent.run("incremental", "--no-wait").returncode == 0
        waiting = latest_session(server)  # queued behind the blocked one
        operator = Operator(server)
        code, out, err = operator.run("cancel", waiting)
        assert code == 0, err
        assert out == f"session {waiting}: cancelled\n"
        code, out, err = operator.run("cancel", waiting)
        assert code == 1 and "409 a cancelled session cannot be cancelled" in err
        code, out, err = operator.run("force", held)
        assert code == 0, err
        assert out == f"session {held}: queued (forced)\n"
        assert server.wait(held) == "done"
        code, out, _err = operator.run("show", held)
        assert "  state      done" in out and "  forced     yes" in out
    finally:
        server.stop()


def changes_api(
    pages: dict[str | None, tuple[bytes, str | None]], asked: list[dict[str, str]]
) -> ApiClient:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/api/sessions/{SESSION}/changes"
        query = dict(request.url.params)
        asked.append(query)
        body, next_after = pages[query.get("after")]
        headers = {"Prepsync-Next-After": next_after} if next_after else {}
        return httpx.Response(200, content=body, headers=headers)

    return mock_api(handle)


def test_changes_pages_are_joined_under_one_header(tmp_path: Path) -> None:
    pages = {
        None: (b"command,id,name\ninsert,1,a\nupdate,2,b\n", "2"),
        "2": (b"command,id,name\ndelete,3,c\n", "3"),
        "3": (b"command,id,name\n", None),
    }
    asked: list[dict[str, str]] = []
    out = tmp_path / "changes.csv"
    with out.open("wb") as sink:
        left = write_changes(
            changes_api(pages, asked),
            SESSION,
            sink,
            table="T",
            command=None,
            limit=None,
            after=None,
        )
    assert left is None
    assert out.read_bytes() == b"command,id,name\ninsert,1,a\nupdate,2,b\ndelete,3,c\n"
    assert [query.get("after") for query in asked] == [None, "2", "3"]
    assert all(query["table"] == "T" and "command" not in query for query in asked)
    # With --limit: one page, and where the next one starts.
    asked.clear()
    with out.open("wb") as sink:
        left = write_changes(
            changes_api(pages, asked),
            SESSION,
            sink,
            table="T",
            command="insert",
            limit=2,
            after=None,
        )
    assert left == "2" and asked == [{"table": "T", "command": "insert", "limit": "2"}]
    assert out.read_bytes() == b"command,id,name\ninsert,1,a\nupdate,2,b\n"


def test_changes_are_the_blocked_delta_as_csv_and_page(
    site: tuple[ServerProcess, Agent, int],
) -> None:
    """The blocked session's changes against the store (which holds the previous export) are
    exactly the delta the agent sent: same rows, same order, same bytes."""
    server, agent, _loaded = site
    held = blocked_session(server)
    operator = Operator(server)
    delta = (agent.working / "ADExport_entries.sorted.delta.csv").read_bytes()
    header, *rows = delta.decode().splitlines(keepends=True)
    code, out, err = operator.run("changes", held, "--table", "ADExport_entries")
    assert code == 0, err
    assert out.encode() == delta
    code, out, err = operator.run(
        "changes", held, "--table", "ADExport_entries", "--command", "delete"
    )
    assert code == 0, err
    assert out == header + "".join(row for row in rows if row.startswith("delete,"))
    assert out.count("\n") == 1 + 5
    # Paging by hand: --limit, then --after as the first page says.
    code, first, err = operator.run("changes", held, "--table", "ADExport_entries", "--limit", "7")
    assert code == 0 and first == header + "".join(rows[:7])
    hint = "more changes follow: add --after "
    assert err.startswith(hint) and err.count("\n") == 1
    after = shlex.split(err[len(hint) :])[0]
    code, rest, err = operator.run("changes", held, "--table", "ADExport_entries", "--after", after)
    assert code == 0 and err == ""
    assert rest == header + "".join(rows[7:])
    # Two tables carried: the table must be named.
    code, out, err = operator.run("changes", held)
    assert code == 1 and err.count("\n") == 1 and "'table' is required" in err
