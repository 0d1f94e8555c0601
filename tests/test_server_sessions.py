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
    orphan = hr.open("HR", "incremental", agent="host-1")
    other_agent = hr.open("HR", "incremental", agent="host-2")
    other_client = operator.open("HR", "incremental", agent="host-1")  # same name, not ours
    delta = people_delta(("update", "3", "cyd"))
    hr.upload(other_agent, DELTA, delta)
    assert hr.commit(other_agent, {DELTA: delta}).status_code == 202
    rerun = hr.open("HR", "incremental", agent="host-1")
    state = hr.state(orphan)
    assert state["state"] == "cancelled"
    assert "interrupted run" in state["reason"] and rerun in state["reason"]
    # Committed: never an orphan (and, the orphan gone, the worker may already take it).
    assert hr.state(other_agent)["state"] in ("queued", "processing", "done")
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
