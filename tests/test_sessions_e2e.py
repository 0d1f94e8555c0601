"""Session lifecycle against a real `prepsync serve` process: orphans of killed runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from serverutil import (
    OPERATOR,
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
# The server's side, an orphan cancelled by its agent's next opening, runs on both stores in
# test_kill_points.py (an agent killed once its files were uploaded).
@sqlite_only()
def test_agent_killed_right_after_opening_its_session_does_not_stall_the_next_run(
    chain: tuple[ServerProcess, Agent, Export],
) -> None:
    """The server opened the session, the agent died before writing its id down: the orphan
    must not hold the next run's session back for the session timeout (an hour here)."""
    server, agent, export = chain
    export.write(agent.sources)
    assert agent.run("complete").returncode == 0
    export.next_day()
    export.write(agent.sources)
    killed = agent.run("incremental", env={"PREPSYNC_CRASH_AT": "session-opened"})
    assert killed.returncode == -signal.SIGKILL
    orphan = latest_session(server)
    assert server.sessions()[0]["state"] == "open"
    journal = json.loads((agent.working / ".prepsync-session.json").read_text())
    assert journal["session"] is None and journal["agent"] == "e2e"  # the intent, no id
    started = time.monotonic()
    rerun = agent.run("incremental")
    assert rerun.returncode == 0, rerun.stderr
    second = latest_session(server)
    assert second != orphan
    assert server.wait(second) == "done"
    assert time.monotonic() - started < 20  # not the 3600 s session timeout
    states = {s["id"]: s["state"] for s in server.sessions()}
    assert states[orphan] == "cancelled"
    assert not (agent.working / ".prepsync-session.json").exists()
    agent.assert_store_matches_export()


def new_session(server: ServerProcess, known: set[str], timeout: float = 30) -> dict[str, str]:
    """The first session the server lists that is not in ``known``."""
    deadline = time.monotonic() + timeout
    while True:
        fresh = [s for s in server.sessions() if s["id"] not in known]
        if fresh:
            return fresh[0]
        assert time.monotonic() < deadline, "no new session"
        time.sleep(0.05)


@pytest.mark.slow
def test_exit_statuses_say_the_verdict(tmp_path: Path) -> None:
    config = tmp_path / "server.xml"
    config.write_text(config_xml(max_deleted=3))
    server = ServerProcess.in_folder(tmp_path, config)
    server.start()
    try:
        agent, export = Agent(tmp_path / "agent", server), Export(seed=5)
        report = tmp_path / "run.json"
        export.write(agent.sources)
        done = agent.run("complete", "--report", str(report))
        assert done.returncode == 0, done.stderr
        first = latest_session(server)
        assert f"session {first}: done" in done.stdout
        delivery = json.loads(report.read_text())["delivery"]
        assert delivery["verdict"] == "done" and delivery["reason"] is None
        entries = delivery["server_session"]["tables"]["ADExport_entries"]
        assert entries["inserted"] == len(export.entries)  # the server's counts, passed through
        # Where the time went: every phase timed, the server's apply within the verdict wait.
        phases = delivery["phase_seconds"]
        assert set(phases) == {"upload", "commit", "verdict_wait"}
        assert all(seconds > 0 for seconds in phases.values())
        apply_seconds = delivery["server_apply_seconds"]
        assert apply_seconds == delivery["server_session"]["apply_seconds"]
        assert 0 < apply_seconds < phases["verdict_wait"] + phases["commit"]

        # Past MaximumDeletedLines=3: status 3, the reason, and how to settle it.
        export.next_day(deletes=5)
        export.write(agent.sources)
        blocked = agent.run("incremental", "--report", str(report))
        assert blocked.returncode == 3, blocked.stderr
        held = latest_session(server)
        assert f"session {held} blocked: " in blocked.stderr
        assert "MaximumDeletedLines" in blocked.stderr
        for action in ("show", "force", "cancel"):
            assert f"prepsync sessions {action} {held} --api-url {server.url}" in blocked.stderr
        assert f"prepsync sessions changes {held} --table ADExport_entries" in blocked.stderr
        assert SECRET not in blocked.stdout + blocked.stderr
        delivery = json.loads(report.read_text())["delivery"]
        assert delivery["verdict"] == "blocked" and "MaximumDeletedLines" in delivery["reason"]
        # Accepted by the server: the baselines advanced whatever the verdict.
        previous = agent.sources / "previous" / "ADExport_entries.sorted.csv"
        assert previous.read_bytes() == agent.sorted_file("ADExport_entries")

        # --no-wait: queued (behind the blocked one) is enough.
        export.next_day(deletes=1)
        export.write(agent.sources)
        queued = agent.run("incremental", "--no-wait", "--report", str(report))
        assert queued.returncode == 0, queued.stderr
        assert "queued" in queued.stdout
        delivery = json.loads(report.read_text())["delivery"]
        assert delivery["verdict"] is None and delivery["server_apply_seconds"] is None
        assert set(delivery["phase_seconds"]) == {"upload", "commit"}  # no wait, none timed

        # No verdict in time: status 5, naming what holds the session back.
        export.next_day(deletes=1)
        export.write(agent.sources)
        waiting = agent.run("incremental", "--wait-timeout", "1")
        assert waiting.returncode == 5, waiting.stderr
        assert f"still queued behind blocked session {held}" in waiting.stderr

        # Cancelled while the agent waits: status 4 and the reason.
        export.next_day(deletes=1)
        export.write(agent.sources)
        known = {s["id"] for s in server.sessions()}
        process = subprocess.Popen(
            agent.command("incremental"),
            env={**os.environ, "PREPSYNC_API_SECRET": SECRET},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        mine = new_session(server, known)["id"]
        assert server.wait(mine, ("queued",)) == "queued"
        with server.api() as api:
            assert api.post(f"/api/sessions/{mine}/cancel").status_code == 200
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 4, err
        assert f"session {mine} cancelled: cancelled by client {OPERATOR}" in err

        # The blocked session rejected: its changes are lost, so the next incremental fails.
        with server.api() as api:
            assert api.post(f"/api/sessions/{held}/cancel").status_code == 200
        export.next_day(deletes=1)
        export.write(agent.sources)
        failed = agent.run("incremental")
        assert failed.returncode == 4, failed.stderr
        assert "failed: " in failed.stderr and "complete synchronization" in failed.stderr
    finally:
        server.stop()
