"""The whole chain: `prepsync prepare --api-url` against a real `prepsync serve` process.

After every synchronization the server's store (read back through the resources endpoint)
must equal the last export's `.sorted.csv`, whatever was killed along the way. The server runs
on both stores (SQLite and PostgreSQL) where its store takes part; the cases that are the
agent's alone, or that a cheaper test covers on both stores, run on SQLite only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverutil import (
    CLIENT,
    HR_SECRET,
    SECRET,
    Agent,
    Export,
    ServerProcess,
    chain,
    config_xml,
    latest_session,
    sqlite_only,
)

__all__ = ["chain"]  # the fixture, used by name


@pytest.mark.slow
def test_complete_then_incrementals_keep_store_equal_to_export(
    chain: tuple[ServerProcess, Agent, Export],
) -> None:
    server, agent, export = chain
    export.write(agent.sources)
    done = agent.run("complete")
    assert done.returncode == 0, done.stderr
    assert "session" in done.stdout
    assert server.wait(latest_session(server)) == "done"
    agent.assert_store_matches_export()
    for _ in range(3):
        export.next_day()
        export.write(agent.sources)
        done = agent.run("incremental")
        assert done.returncode == 0, done.stderr
        assert server.wait(latest_session(server)) == "done"
        agent.assert_store_matches_export()
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.slow
def test_server_killed_mid_upload_then_restarted(
    chain: tuple[ServerProcess, Agent, Export],
) -> None:
    server, agent, export = chain
    for _ in range(4000):
        export.add()  # a bigger file, sent in many small chunks
    export.write(agent.sources)
    process = subprocess.Popen(
        agent.command("complete", "--upload-chunk-size", "8KiB", "--api-retry-seconds", "60"),
        env={**os.environ, "PREPSYNC_API_SECRET": SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sessions = server.data / "sessions"
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size > 0 for p in sessions.glob("*/*.csv")):
        assert time.monotonic() < deadline and process.poll() is None, "upload never started"
        time.sleep(0.005)
    server.kill()
    time.sleep(0.5)  # the agent meets a refused connection and backs off
    server.start()
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert server.wait(latest_session(server)) == "done"
    agent.assert_store_matches_export()


@pytest.mark.slow
@sqlite_only()  # on both stores in test_kill_points.py (the same two points)
@pytest.mark.parametrize("point", ["uploaded", "server-committed"])
def test_agent_killed_around_commit_sends_each_change_once(
    chain: tuple[ServerProcess, Agent, Export], point: str
) -> None:
    server, agent, export = chain
    export.write(agent.sources)
    assert agent.run("complete").returncode == 0
    export.next_day()
    export.write(agent.sources)
    killed = agent.run("incremental", env={"PREPSYNC_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL
    first = latest_session(server)
    rerun = agent.run("incremental")
    assert rerun.returncode == 0, rerun.stderr
    states = {s["id"]: s["state"] for s in server.sessions()}
    second = latest_session(server)
    if point == "uploaded":  # never committed: cancelled, and the rerun sends the changes
        assert second != first
        assert states[first] == "cancelled"
        assert server.wait(second) == "done"
    else:  # committed, same sources: the rerun only advanced the baselines and sent nothing
        assert second == first, "the committed changes were sent again"
        assert "nothing sent again" in rerun.stdout
        assert server.wait(first) == "done"
    agent.assert_store_matches_export()


@pytest.fixture
def blocked(tmp_path: Path) -> Iterator[tuple[ServerProcess, Agent, Export, str, bytes]]:
    """A server with MaximumDeletedLines=3, a complete load done, then an incremental run
    deleting 5 entries: accepted by the agent, blocked by the server. Yields the chain, the
    blocked session and the entries the store held before it.

    On SQLite only: test_server_app.py runs the same server-side story on both stores (a
    blocked session changes nothing until forced, a complete one cancels the blocked and
    queued ones), without an agent process; here the agent's side of it is checked."""
    config = tmp_path / "server.xml"
    config.write_text(config_xml(max_deleted=3))
    server = ServerProcess.in_folder(tmp_path, config)
    server.start()
    try:
        agent, export = Agent(tmp_path / "agent", server), Export(seed=5)
        export.write(agent.sources)
        assert agent.run("complete").returncode == 0
        assert server.wait(latest_session(server)) == "done"
        before = server.resources("ADExport_entries")
        export.next_day(deletes=5)
        export.write(agent.sources)
        # Accepted (the baselines move), then blocked: the run says so with status 3.
        assert agent.run("incremental").returncode == 3
        session = latest_session(server)
        assert server.wait(session, ("blocked",)) == "blocked"
        yield server, agent, export, session, before
    finally:
        server.stop()


@pytest.mark.slow
def test_blocked_session_changes_nothing_until_forced(
    blocked: tuple[ServerProcess, Agent, Export, str, bytes],
) -> None:
    server, agent, _, session, before = blocked
    assert server.resources("ADExport_entries") == before
    with server.api() as api:
        assert api.post(f"/api/sessions/{session}/force").status_code == 202
    assert server.wait(session) == "done"
    agent.assert_store_matches_export()


@pytest.mark.slow
def test_complete_session_cancels_blocked_and_queued_incrementals(
    blocked: tuple[ServerProcess, Agent, Export, str, bytes],
) -> None:
    server, agent, export, held, _ = blocked
    export.next_day(deletes=1)
    export.write(agent.sources)
    assert agent.run("incremental", "--no-wait").returncode == 0
    queued = latest_session(server)
    time.sleep(0.3)
    assert server.wait(queued, ("queued",)) == "queued"  # waits behind the blocked one
    assert agent.run("complete").returncode == 3  # blocked too (see below)
    complete = latest_session(server)
    # The complete load implies 6 deletes against the store: past the limit itself.
    assert server.wait(complete, ("blocked", "done")) == "blocked"
    states = {s["id"]: s["state"] for s in server.sessions()}
    assert states[held] == "cancelled" and states[queued] == "cancelled"
    with server.api() as api:
        assert api.post(f"/api/sessions/{complete}/force").status_code == 202
    assert server.wait(complete) == "done"
    agent.assert_store_matches_export()


@sqlite_only()  # refused before any session: no store involved
def test_refused_credentials_fail_cleanly_without_leaking(
    chain: tuple[ServerProcess, Agent, Export],
) -> None:
    _server, agent, export = chain
    export.write(agent.sources)
    wrong = agent.run("complete", secret="not-the-secret")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("error: ") and wrong.stderr.count("\n") == 1
    assert "not-the-secret" not in wrong.stderr + wrong.stdout
    assert "401" in wrong.stderr
    assert not (agent.sources / "previous").exists()


@sqlite_only()  # refused before any session: no store involved
def test_client_not_allowed_on_connector_gets_403(
    chain: tuple[ServerProcess, Agent, Export],
) -> None:
    _server, agent, export = chain
    export.write(agent.sources)
    command = [a if a != CLIENT else "hr-only" for a in agent.command("complete")]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PREPSYNC_API_SECRET": HR_SECRET},
    )
    assert done.returncode == 1 and "403" in done.stderr
    assert not (agent.sources / "previous").exists()


# The connector's agent is the store's to tell: test_server_sessions.py checks it on both.
@sqlite_only()
def test_a_second_agent_is_refused_until_it_takes_the_connector_over(
    chain: tuple[ServerProcess, Agent, Export],
) -> None:
    server, first, export = chain
    second = Agent(first.root.parent / "second", server, name="second-host")
    export.write(first.sources)
    assert first.run("complete").returncode == 0
    # The second host has its own baselines: a complete run there is a host migration.
    export.write(second.sources)
    assert second.run("complete").returncode == 0
    export.next_day()
    export.write(first.sources)
    sessions_before = server.sessions()
    baseline = (first.sources / "previous" / "ADExport_entries.sorted.csv").read_bytes()
    refused = first.run("incremental")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    assert "409" in refused.stderr and "delivered by agent 'second-host'" in refused.stderr
    assert server.sessions() == sessions_before  # nothing recorded
    assert (first.sources / "previous" / "ADExport_entries.sorted.csv").read_bytes() == baseline
    assert not (first.working / ".prepsync-session.json").exists()  # no session to settle
    again = first.run("incremental")  # the scheduler's next run: refused the same way
    assert again.returncode == 1 and "delivered by agent 'second-host'" in again.stderr
    # The connector's agent goes on.
    export.write(second.sources)
    assert second.run("incremental").returncode == 0
    second.assert_store_matches_export()
