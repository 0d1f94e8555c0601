"""Who may do what with a session, and orphans of killed runs (server side, in process).

The configuration (tests/serverutil.py) has two clients allowed on connector HR: ``agent``
(every connector) and ``hr-only``. A session's files and commit belong to the client that opened
it; reading it, forcing it and cancelling it are open to any client allowed on its connector.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serverutil import HR_SECRET, Api, csv_bytes, write_config

from prepsync.server import create_app

PEOPLE = "HR_people"
FULL = f"{PEOPLE}.sorted.csv"
DELTA = f"{PEOPLE}.sorted.delta.csv"
BASE = [("1", "ann"), ("2", "bob"), ("3", "cy")]


def people(*rows: tuple[str, str]) -> bytes:
    return csv_bytes(["id", "name"], rows)


def people_delta(*rows: tuple[str, str, str]) -> bytes:
    return csv_bytes(["command", "id", "name"], rows)


@pytest.fixture
def clients(tmp_path: Path, store_url: str | None) -> Iterator[tuple[Api, Api]]:
    """(hr, operator): two clients allowed on HR, with HR loaded with BASE (on each store)."""
    app = create_app(write_config(tmp_path), tmp_path / "data", database=store_url)
    with TestClient(app) as http:
        hr, operator = Api(http, "hr-only", HR_SECRET), Api(http)
        assert hr.state(hr.send("HR", "complete", {FULL: people(*BASE)}))["state"] == "done"
        yield hr, operator


def test_files_and_commit_belong_to_the_opening_client(clients: tuple[Api, Api]) -> None:
    hr, operator = clients
    session = hr.open("HR", "incremental")
    delta = people_delta(("insert", "4", "di"))
    path = f"/api/sessions/{session}/files/{DELTA}"
    # Another client allowed on the connector: as if the session did not exist.
    for response in (
        operator.put_chunk(session, DELTA, delta, 0, len(delta)),
        operator.put(path, delta),  # whole-file PUT
        operator.get(path),
        operator.commit(session, {DELTA: delta}),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "unknown session"
    assert hr.get(path).status_code == 404  # nothing arrived: the refused PUTs wrote nothing
    hr.upload(session, DELTA, delta)
    assert hr.get(path).json()["size"] == len(delta)
    assert operator.commit(session, {DELTA: delta}).status_code == 404
    assert hr.state(session)["state"] == "open"  # the refused commit did not queue it
    assert hr.commit(session, {DELTA: delta}).status_code == 202
    assert hr.wait(session)["state"] == "done"
    assert hr.resources("HR", PEOPLE) == people(*BASE, ("4", "di"))


def test_operators_read_force_and_cancel_any_session_of_their_connector(
    clients: tuple[Api, Api],
) -> None:
    hr, operator = clients
    two_deletes = people_delta(("delete", "1", "ann"), ("delete", "2", "bob"))
    blocked = hr.send("HR", "incremental", {DELTA: two_deletes})  # MaximumDeletedLines=1
    seen = operator.state(blocked)
    assert seen["state"] == "blocked" and seen["client"] == "hr-only"
    listed = operator.get("/api/connectors/HR/sessions").json()
    assert blocked in [item["id"] for item in listed]
    assert operator.post(f"/api/sessions/{blocked}/force").status_code == 202
    assert operator.wait(blocked)["state"] == "done"
    assert hr.resources("HR", PEOPLE) == people(("3", "cy"))
    # Cancel: the operator may cancel another client's session ...
    theirs = hr.open("HR", "incremental")
    cancelled = operator.post(f"/api/sessions/{theirs}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["reason"] == "cancelled by client agent"
    # ... and the session's own client may cancel its own.
    own = hr.open("HR", "incremental")
    assert hr.post(f"/api/sessions/{own}/cancel").status_code == 200
    # A client not allowed on the connector may do none of it.
    ad_session = operator.open("AD", "incremental")
    for response in (
        hr.get(f"/api/sessions/{ad_session}"),
        hr.post(f"/api/sessions/{ad_session}/cancel"),
        hr.post(f"/api/sessions/{ad_session}/force"),
    ):
        assert response.status_code == 403


def test_opening_cancels_the_same_agents_open_sessions(clients: tuple[Api, Api]) -> None:
    """A run killed after the server opened its session leaves it open; the agent's next
    session must not wait behind it for the session timeout (an hour by default)."""
    hr, operator = clients
    committed = hr.open("HR", "incremental")
    delta = people_delta(("update", "3", "cyd"))
    hr.upload(committed, DELTA, delta)
    assert hr.commit(committed, {DELTA: delta}).status_code == 202
    orphan = hr.open("HR", "incremental")
    other_client = operator.open("HR", "incremental")  # same agent name, not ours
    rerun = hr.open("HR", "incremental")
    state = hr.state(orphan)
    assert state["state"] == "cancelled"
    assert "interrupted run" in state["reason"] and rerun in state["reason"]
    # Committed: never an orphan (and, the orphan gone, the worker may already take it).
    assert hr.state(committed)["state"] in ("queued", "processing", "done")
    assert operator.state(other_client)["state"] == "open"
    assert operator.post(f"/api/sessions/{other_client}/cancel").status_code == 200
    # Nothing holds the rerun back: it is applied as soon as it is committed.
    insert = people_delta(("insert", "9", "zed"))
    hr.upload(rerun, DELTA, insert)
    assert hr.commit(rerun, {DELTA: insert}).status_code == 202
    assert hr.wait(rerun, timeout=10)["state"] == "done"
    assert hr.resources("HR", PEOPLE) == people(*BASE[:2], ("3", "cyd"), ("9", "zed"))


def test_sessions_recorded_before_ownership_stay_open_to_allowed_clients(tmp_path: Path) -> None:
    """A data directory written before sessions had an owner: its sessions have none."""
    app = create_app(write_config(tmp_path), tmp_path / "data")
    with TestClient(app) as http:
        session = Api(http, "hr-only", HR_SECRET).open("HR", "initial")
    database = tmp_path / "data" / "sessions.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("ALTER TABLE sessions DROP COLUMN client")  # the old schema
    app = create_app(tmp_path / "config.xml", tmp_path / "data")
    with TestClient(app) as http:
        operator = Api(http)
        assert operator.state(session)["client"] is None
        operator.upload(session, FULL, people(("1", "a")))
        assert operator.commit(session, {FULL: people(("1", "a"))}).status_code == 202
        assert operator.wait(session)["state"] == "done"
        # New sessions are owned again.
        owned = operator.open("HR", "incremental")
        assert operator.state(owned)["client"] == "agent"


# ------------------------------------------------------------------------------ one agent


def test_an_incremental_session_of_another_agent_is_refused(
    clients: tuple[Api, Api], tmp_path: Path
) -> None:
    hr, operator = clients  # HR was loaded by agent-1
    before = hr.get("/api/connectors/HR/sessions").json()
    for client in (hr, operator):  # the agent decides, whichever client it uses
        response = client.post(
            "/api/connectors/HR/sessions", json={"agent": "host-2", "mode": "incremental"}
        )
        assert response.status_code == 409
        assert response.json()["agent"] == "agent-1"
        reason = response.json()["error"]
        assert "\n" not in reason and "delivered by agent 'agent-1'" in reason
        assert "'host-2'" in reason and "complete" in reason
    assert hr.get("/api/connectors/HR/sessions").json() == before  # nothing recorded
    assert sorted(p.name for p in (tmp_path / "data" / "sessions").iterdir()) == []
    # The connector's agent is not held up.
    assert hr.state(hr.send("HR", "incremental", {DELTA: people_delta()}))["state"] == "done"


def test_a_complete_session_of_another_agent_takes_the_connector_over(
    clients: tuple[Api, Api],
) -> None:
    hr, _operator = clients
    pending = hr.open("HR", "incremental")  # agent-1's, left open
    takeover = hr.post("/api/connectors/HR/sessions", json={"agent": "host-2", "mode": "complete"})
    assert takeover.status_code == 201
    assert hr.state(pending)["state"] == "cancelled"  # a complete session supersedes it
    # From its opening on, the new agent delivers the connector and the old one is refused.
    old = hr.post("/api/connectors/HR/sessions", json={"agent": "agent-1", "mode": "incremental"})
    assert old.status_code == 409 and old.json()["agent"] == "host-2"
    session = takeover.json()["id"]
    hr.upload(session, FULL, people(*BASE))
    assert hr.commit(session, {FULL: people(*BASE)}).status_code == 202
    assert hr.wait(session)["state"] == "done"
    new = hr.post("/api/connectors/HR/sessions", json={"agent": "host-2", "mode": "incremental"})
    assert new.status_code == 201


def test_a_takeover_cancelled_before_its_commit_took_nothing_over(
    clients: tuple[Api, Api],
) -> None:
    hr, operator = clients
    takeover = hr.post("/api/connectors/HR/sessions", json={"agent": "host-2", "mode": "initial"})
    assert takeover.status_code == 201
    assert operator.post(f"/api/sessions/{takeover.json()['id']}/cancel").status_code == 200
    refused = hr.post(
        "/api/connectors/HR/sessions", json={"agent": "host-2", "mode": "incremental"}
    )
    assert refused.status_code == 409 and refused.json()["agent"] == "agent-1"
    assert hr.open("HR", "incremental")  # agent-1 still delivers it


def test_a_connector_never_delivered_takes_any_agent(clients: tuple[Api, Api]) -> None:
    _hr, operator = clients
    first = operator.open("AD", "incremental", agent="host-7")  # AD has no session yet
    assert operator.state(first)["state"] == "open"
