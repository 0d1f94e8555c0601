"""An online run killed right after the server accepted its commit, then run again as a
scheduler does: on the same sources the rerun finishes the committed session and sends nothing
(each change reaches the server once); on sources that changed since, it is a new run.

Change files matter most here: they have no baseline that would make their changes vanish from
a second session, so the same file sent again was applied twice (updates silently, inserts
failing the session and every later incremental one).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverutil import (
    CLIENT,
    SECRET,
    Agent,
    ServerProcess,
    config_xml,
    csv_bytes,
    mock_api,
    sqlite_only,
)

from prepsync.client import ApiClient
from prepsync.errors import PrepsyncError
from prepsync.request import PrepareRequest
from prepsync.staging import working_lock
from prepsync.sync import SESSION_JOURNAL, same_sources, settle_interrupted, synchronize

ENTRIES, MEMBERS = "ADExport_entries", "ADExport_members"
ENTRY_HEADER, MEMBER_HEADER = ("objectGUID", "dn", "mail"), ("dn", "member")
CRASH_AFTER_COMMIT = {"PREPSYNC_CRASH_AT": "server-committed"}
# The agent's journal and fingerprints decide these cases; the server only answers a session's
# state, which every store gives alike. The case where the server applies a change file once
# runs on both stores (a failed delta's verdict is compared across the stores by
# test_server_pgstore.py).
AGENT_SIDE = sqlite_only()


def guid(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


def entry(n: int, mail: str | None = None) -> tuple[str, str, str]:
    return (guid(n), f"CN=User {n},DC=corp", mail or f"user{n}@corp.example")


class Site:
    """The server's store as a model: each day's change file, or full extract, and the rows
    the store must hold once it is applied."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.entries = {guid(n): entry(n) for n in range(1, 7)}
        self.members = {(f"CN=G{n % 2},DC=corp", f"CN=User {n},DC=corp") for n in range(1, 5)}

    def write_full(self) -> None:
        (self.agent.sources / f"{ENTRIES}.csv").write_bytes(
            csv_bytes(ENTRY_HEADER, sorted(self.entries.values(), reverse=True))
        )
        (self.agent.sources / f"{MEMBERS}.csv").write_bytes(
            csv_bytes(MEMBER_HEADER, sorted(self.members, reverse=True))
        )

    def write_changes(
        self,
        entries: list[tuple[str, tuple[str, str, str]]],
        members: list[tuple[str, tuple[str, str]]],
    ) -> None:
        """A change file per table (command column first), and the model updated by it."""
        for command, row in entries:
            if command == "delete":
                del self.entries[row[0]]
            else:
                self.entries[row[0]] = row
        for command, pair in members:
            (self.members.discard if command == "delete" else self.members.add)(pair)
        (self.agent.sources / f"{ENTRIES}.csv").write_bytes(
            csv_bytes(("command", *ENTRY_HEADER), [(c, *row) for c, row in entries])
        )
        (self.agent.sources / f"{MEMBERS}.csv").write_bytes(
            csv_bytes(("command", *MEMBER_HEADER), [(c, *pair) for c, pair in members])
        )

    def expected(self, table: str) -> bytes:
        if table == ENTRIES:
            return csv_bytes(ENTRY_HEADER, sorted(self.entries.values()))
        return csv_bytes(MEMBER_HEADER, sorted(self.members))


@pytest.fixture
def site(tmp_path: Path, store_url: str | None) -> Iterator[tuple[ServerProcess, Site]]:
    """A server and an agent after a complete run of a full extract."""
    config = tmp_path / "server.xml"
    config.write_text(config_xml())
    server = ServerProcess.in_folder(tmp_path, config, database=store_url)
    server.start()
    try:
        model = Site(Agent(tmp_path / "agent", server))
        model.write_full()
        done = model.agent.run("complete")
        assert done.returncode == 0, done.stderr
        yield server, model
    finally:
        server.stop()


def day_one(model: Site) -> None:
    """Inserts, updates and deletes, in both tables."""
    model.write_changes(
        [("insert", entry(7)), ("update", entry(2, "moved@corp.example")), ("delete", entry(3))],
        [
            ("insert", ("CN=G1,DC=corp", "CN=User 7,DC=corp")),
            ("delete", ("CN=G1,DC=corp", "CN=User 1,DC=corp")),
        ],
    )


def day_two(model: Site) -> None:
    model.write_changes(
        [("insert", entry(8)), ("update", entry(4, "again@corp.example"))],
        [("insert", ("CN=G0,DC=corp", "CN=User 8,DC=corp"))],
    )


def assert_store(server: ServerProcess, model: Site) -> None:
    for table in (ENTRIES, MEMBERS):
        assert server.resources(table) == model.expected(table), table


def settled_sessions(server: ServerProcess) -> list[dict[str, Any]]:
    """The connector's sessions, oldest first, each once it has a verdict."""
    listing = server.sessions()[::-1]
    for session in listing:
        session["state"] = server.wait(session["id"], ("done", "failed", "blocked", "cancelled"))
    return listing


def crash_after_commit(model: Site) -> None:
    killed = model.agent.run("incremental", env=CRASH_AFTER_COMMIT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (model.agent.working / SESSION_JOURNAL).exists()


def test_change_file_rerun_on_the_same_export_sends_nothing(
    site: tuple[ServerProcess, Site],
) -> None:
    server, model = site
    day_one(model)
    crash_after_commit(model)
    committed = server.sessions()[0]
    for _ in range(2):  # a rerun, and a rerun of that rerun
        rerun = model.agent.run("incremental")
        assert rerun.returncode == 0, rerun.stderr
        assert f"session {committed['id']}: done" in rerun.stdout, rerun.stdout
        assert "nothing sent again" in rerun.stdout, rerun.stdout
    sessions = settled_sessions(server)
    # One session per change file, each applied once: none was opened for the reruns.
    assert [(s["mode"], s["state"]) for s in sessions] == [
        ("complete", "done"),
        ("incremental", "done"),
    ]
    counts = sessions[1]["tables"]
    assert counts[ENTRIES]["inserted"] == 1, counts
    assert counts[ENTRIES]["updated"] == 1, counts
    assert counts[ENTRIES]["deleted"] == 1, counts
    assert_store(server, model)

    # The next export is a new run, sent and applied once.
    day_two(model)
    nextday = model.agent.run("incremental")
    assert nextday.returncode == 0, nextday.stderr
    assert "file(s) sent" in nextday.stdout
    sessions = settled_sessions(server)
    assert [s["state"] for s in sessions] == ["done"] * 3
    assert_store(server, model)
    assert not (model.agent.working / SESSION_JOURNAL).exists()


@AGENT_SIDE
def test_a_change_file_run_killed_while_it_waits_for_the_verdict_is_not_sent_again(
    site: tuple[ServerProcess, Site],
) -> None:
    """Killed after advancing its baselines, as it waits for the verdict: the journal stays
    (marked committed) until the verdict is known, so the rerun on the same export waits for
    that session instead of sending the change file again (updates applied twice, deletes of
    keys already deleted failing the second session)."""
    server, model = site
    day_one(model)
    killed = model.agent.run("incremental", env={"PREPSYNC_CRASH_AT": "baselines-advanced"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    committed = server.sessions()[0]
    rerun = model.agent.run("incremental")
    assert rerun.returncode == 0, rerun.stderr
    assert f"session {committed['id']}: done" in rerun.stdout, rerun.stdout
    assert "nothing sent again" in rerun.stdout, rerun.stdout
    assert [(s["mode"], s["state"]) for s in settled_sessions(server)] == [
        ("complete", "done"),
        ("incremental", "done"),
    ]
    assert_store(server, model)


@AGENT_SIDE
def test_the_journal_is_gone_once_the_verdict_is_known_and_stays_without_waiting(
    site: tuple[ServerProcess, Site],
) -> None:
    _server, model = site
    day_one(model)
    queued = model.agent.run("incremental", "--no-wait")
    assert queued.returncode == 0, queued.stderr
    journal = json.loads((model.agent.working / SESSION_JOURNAL).read_text())
    assert journal["committed"] is True  # no verdict seen: a rerun must not send it again
    rerun = model.agent.run("incremental")
    assert rerun.returncode == 0, rerun.stderr
    assert "nothing sent again" in rerun.stdout, rerun.stdout
    day_two(model)
    nextday = model.agent.run("incremental")
    assert nextday.returncode == 0, nextday.stderr
    assert "file(s) sent" in nextday.stdout, nextday.stdout
    assert not (model.agent.working / SESSION_JOURNAL).exists()


@AGENT_SIDE
def test_a_rerun_after_a_committed_session_failed_sends_nothing(
    site: tuple[ServerProcess, Site],
) -> None:
    """The server failed the committed session (an insert of a key it holds) before the rerun
    asked: that is the delivered session's verdict. Sending the change file again would only
    open a second session, failed in turn, for every rerun on the same export."""
    server, model = site
    model.write_changes([("insert", entry(2, "again@corp.example"))], [])
    crash_after_commit(model)
    committed = server.sessions()[0]
    assert server.wait(committed["id"], ("done", "failed")) == "failed"
    for _ in range(2):  # a rerun, and a rerun of that rerun
        rerun = model.agent.run("incremental")
        assert rerun.returncode == 4, rerun.stderr
        assert f"session {committed['id']}: failed" in rerun.stdout, rerun.stdout
        assert "nothing sent again" in rerun.stdout, rerun.stdout
    assert [(s["mode"], s["state"]) for s in settled_sessions(server)] == [
        ("complete", "done"),
        ("incremental", "failed"),
    ]


@AGENT_SIDE
def test_change_file_changed_after_the_crash_is_a_new_run(
    site: tuple[ServerProcess, Site],
) -> None:
    server, model = site
    day_one(model)
    crash_after_commit(model)
    day_two(model)  # the scheduler exported again before the rerun
    rerun = model.agent.run("incremental")
    assert rerun.returncode == 0, rerun.stderr
    assert "file(s) sent" in rerun.stdout
    sessions = settled_sessions(server)
    assert [(s["mode"], s["state"]) for s in sessions] == [
        ("complete", "done"),
        ("incremental", "done"),
        ("incremental", "done"),
    ]
    assert sessions[2]["tables"][ENTRIES]["inserted"] == 1
    assert_store(server, model)  # day one's changes once, then day two's
    assert not (model.agent.working / SESSION_JOURNAL).exists()


@AGENT_SIDE
def test_touched_export_is_a_new_run(site: tuple[ServerProcess, Site]) -> None:
    """The fingerprint is size and modification time: a rewritten file counts as new even
    with the same bytes (full extract here: sending it again changes nothing)."""
    server, model = site
    model.entries[guid(9)] = entry(9)
    model.write_full()
    crash_after_commit(model)
    source = model.agent.sources / f"{ENTRIES}.csv"
    stamp = source.stat().st_mtime_ns + 1_000_000_000
    os.utime(source, ns=(stamp, stamp))
    rerun = model.agent.run("incremental")
    assert rerun.returncode == 0, rerun.stderr
    assert "file(s) sent" in rerun.stdout
    sessions = settled_sessions(server)
    assert [s["state"] for s in sessions] == ["done"] * 3
    assert sessions[2]["tables"][ENTRIES]["inserted"] == 0  # the baseline had advanced
    assert_store(server, model)


@AGENT_SIDE
def test_full_extract_rerun_finishes_the_session_and_sends_nothing(
    site: tuple[ServerProcess, Site],
) -> None:
    server, model = site
    model.entries[guid(9)] = entry(9)
    del model.entries[guid(1)]
    model.write_full()
    crash_after_commit(model)
    rerun = model.agent.run("incremental")
    assert rerun.returncode == 0, rerun.stderr
    assert "nothing sent again" in rerun.stdout
    assert [s["state"] for s in settled_sessions(server)] == ["done"] * 2
    assert_store(server, model)
    baseline = model.agent.sources / "previous" / f"{ENTRIES}.sorted.csv"
    assert baseline.read_bytes() == model.expected(ENTRIES)  # advanced from the session's run

    model.entries[guid(10)] = entry(10)
    model.write_full()
    nextday = model.agent.run("incremental")
    assert nextday.returncode == 0, nextday.stderr
    sessions = settled_sessions(server)
    assert [s["state"] for s in sessions] == ["done"] * 3
    assert sessions[2]["tables"][ENTRIES]["inserted"] == 1
    assert_store(server, model)


@AGENT_SIDE
def test_complete_rerun_after_a_committed_incremental_reloads(
    site: tuple[ServerProcess, Site],
) -> None:
    """A complete run on the same files is not the incremental run that crashed: it was asked
    to reload everything, which is harmless to send again."""
    server, model = site
    day_one(model)
    crash_after_commit(model)
    rerun = model.agent.run("complete")
    assert rerun.returncode == 0, rerun.stderr
    assert "file(s) sent" in rerun.stdout
    sessions = settled_sessions(server)
    assert [(s["mode"], s["state"]) for s in sessions][1:] == [
        ("incremental", "done"),
        ("complete", "done"),
    ]


@AGENT_SIDE
def test_a_source_changed_while_read_is_not_committed(
    site: tuple[ServerProcess, Site],
) -> None:
    """The fingerprint is taken before the sources are read and checked after: a source that
    changed meanwhile would leave a journal that does not describe what the session holds."""
    server, model = site
    day_one(model)
    source = model.agent.sources / f"{ENTRIES}.csv"
    touched = []

    def touch_once(table: str, phase: str, done: int, total: int) -> None:
        if not touched:
            stamp = source.stat().st_mtime_ns + 1_000_000_000
            os.utime(source, ns=(stamp, stamp))
            touched.append(table)

    request = PrepareRequest(
        connector="AD",
        mode="incremental",
        sources_dir=model.agent.sources,
        working_dir=model.agent.working,
        parallel=1,
    )
    with (
        ApiClient(server.url, CLIENT, SECRET) as api,
        pytest.raises(PrepsyncError, match="changed while it was read"),
    ):
        synchronize(api, request, agent="e2e", tables=None, progress=touch_once)
    assert touched
    sessions = settled_sessions(server)
    assert [s["state"] for s in sessions] == ["done", "cancelled"]
    assert not (model.agent.working / SESSION_JOURNAL).exists()
    # Run again, the export now settled: sent once.
    rerun = model.agent.run("incremental")
    assert rerun.returncode == 0, rerun.stderr
    assert [s["state"] for s in settled_sessions(server)] == ["done", "cancelled", "done"]
    assert_store(server, model)


@AGENT_SIDE
def test_the_journal_records_the_sources_before_the_session_opens(
    site: tuple[ServerProcess, Site],
) -> None:
    """Killed right after the opening: the fingerprint is on disk already (it is in the
    intent), so it is durable long before the commit."""
    _server, model = site
    day_one(model)
    killed = model.agent.run("incremental", env={"PREPSYNC_CRASH_AT": "session-opened"})
    assert killed.returncode == -signal.SIGKILL
    journal = json.loads((model.agent.working / SESSION_JOURNAL).read_text())
    source = model.agent.sources / f"{ENTRIES}.csv"
    recorded = {item["table"]: item for item in journal["sources"]["files"]}
    assert recorded[ENTRIES]["size"] == source.stat().st_size
    assert recorded[ENTRIES]["mtime_ns"] == source.stat().st_mtime_ns


@pytest.mark.parametrize("verdict", ["failed", "cancelled"])
def test_a_journal_seen_committed_keeps_its_sessions_later_verdict(
    tmp_path: Path, verdict: str
) -> None:
    """A rerun saw the session committed (journal marked), the server later failed or
    cancelled it: that is the delivered session's verdict, so a rerun on the same sources
    still sends nothing, and the baselines are not advanced a second time."""
    session = "0f8fad5b-d9cb-469f-a165-70867728950e"
    entry = {
        "session": session,
        "connector": "AD",
        "agent": "e2e",
        "mode": "incremental",
        "sources": {"separator": ",", "command_column": "command", "files": []},
        "tables": [{"table": "T", "sorted": None, "change_file": True}],
        "files": [{"name": "T.sorted.delta.csv", "size": 3, "xxh3_128": "00"}],
        "committed": True,
    }
    (tmp_path / SESSION_JOURNAL).write_text(json.dumps(entry))
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/api/sessions/{session}":
            return httpx.Response(200, json={"id": session, "state": verdict})
        return httpx.Response(500, json={"error": "unexpected"})

    with working_lock(tmp_path):
        settled = settle_interrupted(mock_api(handle, calls=calls), tmp_path, tmp_path)
    assert settled is not None and settled.state == verdict
    assert same_sources(settled.entry, entry["sources"], "incremental")
    assert [r.name for r in settled.receipts()] == ["T.sorted.delta.csv"]
    assert (tmp_path / SESSION_JOURNAL).exists()
    assert not (tmp_path / "previous").exists()  # not advanced again
    assert calls == ["POST /connect/token", f"GET /api/sessions/{session}"]
