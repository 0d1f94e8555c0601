"""Session lifecycle against a real `prepsync serve` process: orphans of killed runs."""

from __future__ import annotations

import json
import signal
import time

import pytest
from test_e2e import Agent, Export, Server, chain, latest_session

__all__ = ["chain"]  # the fixture, used by name


@pytest.mark.slow
def test_agent_killed_right_after_opening_its_session_does_not_stall_the_next_run(
    chain: tuple[Server, Agent, Export],
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
