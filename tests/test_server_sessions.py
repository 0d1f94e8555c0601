"""Who may do what with a session, and orphans of killed runs (server side, in process).

The configuration (tests/serverutil.py) has three clients allowed on connector HR: ``agent``
(every connector, Profile ``Agent``), ``hr-only`` (no Profile) and ``operator`` (every connector,
Profile ``Administrator``, the server's operator profile). A session's files and commit belong to
the client that opened it; forcing it, reading its changes and cancelling it once committed (or
another client's) are an operator's; a delivering client reads the state of its own sessions and
cancels its own before the commit.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
def clients(tmp_path: Path, store_url: str | None) -> Iterator[tuple[Api, Api, Api]]:
    """(hr, agent, operator): two delivering clients and an operator, all allowed on HR, with
    HR loaded with BASE by hr (on each store)."""
    app = create_app(write_config(tmp_path), tmp_path / "data", database=store_url)
    with TestClient(app) as http:
        hr, agent = Api(http, "hr-only", HR_SECRET), Api(http)
        assert hr.state(hr.send("HR", "complete", {FULL: people(*BASE)}))["state"] == "done"
        yield hr, agent, agent.operator()


def test_files_and_commit_belong_to_the_opening_client(clients: tuple[Api, Api, Api]) -> None:
    hr, other, operator = clients
    session = hr.open("HR", "incremental")
    delta = people_delta(("insert", "4", "di"))
    path = f"/api/sessions/{session}/files/{DELTA}"
    # Another client allowed on the connector, an operator too: as if the session did not exist.
    for response in (
        *(client.put_chunk(session, DELTA, delta, 0, len(delta)) for client in (other, operator)),
        *(client.put(path, delta) for client in (other, operator)),  # whole-file PUT
        *(client.get(path) for client in (other, operator)),
        *(client.commit(session, {DELTA: delta}) for client in (other, operator)),
        other.get(f"/api/sessions/{session}"),  # a delivering client reads only its own
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
    clients: tuple[Api, Api, Api],
) -> None:
    hr, _agent, operator = clients
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
    assert cancelled.json()["reason"] == "cancelled by client operator"
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


def _refused_to(response: Any, client: str, profile: str) -> str:
    """The 403 of a review action to a delivering client; its reason."""
    assert response.status_code == 403, response.text
    reason: str = response.json()["error"]
    assert "needs an operator" in reason and f"client {client!r} has {profile}" in reason
    assert "operator profile 'Administrator'" in reason
    assert response.json()["operator_profile"] == "Administrator"
    return reason


def test_an_agent_cannot_force_cancel_or_review_its_own_blocked_session(
    clients: tuple[Api, Api, Api],
) -> None:
    """The agent whose mass deletion was blocked must not force it with its own credentials."""
    hr, agent, operator = clients
    two_deletes = people_delta(("delete", "1", "ann"), ("delete", "2", "bob"))
    blocked = hr.send("HR", "incremental", {DELTA: two_deletes})  # MaximumDeletedLines=1
    assert hr.state(blocked)["state"] == "blocked"  # the state of its own session: readable
    for client, profile in ((hr, "no Profile"), (agent, "Profile 'Agent'")):
        forced = client.post(f"/api/sessions/{blocked}/force")
        assert _refused_to(forced, client.client_id, profile).startswith("forcing a session")
        changes = client.get(f"/api/sessions/{blocked}/changes")
        assert "reading a session's changes" in _refused_to(changes, client.client_id, profile)
        cancelled = client.post(f"/api/sessions/{blocked}/cancel")
        _refused_to(cancelled, client.client_id, profile)
    assert "committed (blocked)" in hr.post(f"/api/sessions/{blocked}/cancel").json()["error"]
    other = agent.post(f"/api/sessions/{blocked}/cancel").json()["error"]
    assert "another client's session" in other
    assert operator.state(blocked)["state"] == "blocked"  # none of it changed anything
    assert hr.resources("HR", PEOPLE) == people(*BASE)
    # The operator reviews it and settles it.
    changes = operator.get(f"/api/sessions/{blocked}/changes")
    assert changes.status_code == 200 and changes.text.count("delete") == 2
    assert operator.post(f"/api/sessions/{blocked}/force").status_code == 202
    assert operator.wait(blocked)["state"] == "done"


def test_a_delivering_client_cancels_its_own_session_only_before_its_commit(
    clients: tuple[Api, Api, Api],
) -> None:
    hr, agent, operator = clients
    # Open, its own: a failed run cleans up.
    own = hr.open("HR", "incremental")
    hr.upload(own, DELTA, people_delta(("insert", "4", "di")))
    cancelled = hr.post(f"/api/sessions/{own}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    # Settled: the 409 of any settled session, so a repeat after a lost answer learns it.
    again = hr.post(f"/api/sessions/{own}/cancel")
    assert again.status_code == 409 and again.json()["state"] == "cancelled"
    # Another client's open session: an operator's to cancel.
    theirs = agent.open("HR", "incremental")
    _refused_to(hr.post(f"/api/sessions/{theirs}/cancel"), "hr-only", "no Profile")
    assert agent.state(theirs)["state"] == "open"
    # Committed (queued behind the open one): the operator's to settle.
    queued = hr.send("HR", "incremental", {DELTA: people_delta(("insert", "5", "ed"))}, wait=False)
    assert hr.state(queued)["state"] == "queued"
    _refused_to(hr.post(f"/api/sessions/{queued}/cancel"), "hr-only", "no Profile")
    assert operator.post(f"/api/sessions/{queued}/cancel").status_code == 200
    assert operator.post(f"/api/sessions/{theirs}/cancel").status_code == 200
    # Listing the connector's sessions stays open to every client allowed on it.
    listed = [item["id"] for item in hr.get("/api/connectors/HR/sessions").json()]
    assert {own, theirs, queued} <= set(listed)


def test_the_operator_profile_is_the_servers_choice(tmp_path: Path) -> None:
    app = create_app(write_config(tmp_path), tmp_path / "data", operator_profile="Agent")
    with TestClient(app) as http:
        agent = Api(http)  # Profile="Agent": the operator here
        session = Api(http, "hr-only", HR_SECRET).open("HR", "complete")
        assert agent.post(f"/api/sessions/{session}/cancel").status_code == 200
        refused = agent.operator().post(f"/api/sessions/{session}/force")
        assert refused.status_code == 403
        assert "operator profile 'Agent'" in refused.json()["error"]


def test_opening_cancels_the_same_agents_open_sessions(clients: tuple[Api, Api, Api]) -> None:
    """A run killed after the server opened its session leaves it open; the agent's next
    session must not wait behind it for the session timeout (an hour by default)."""
    hr, other, _operator = clients
    committed = hr.open("HR", "incremental")
    delta = people_delta(("update", "3", "cyd"))
    hr.upload(committed, DELTA, delta)
    assert hr.commit(committed, {DELTA: delta}).status_code == 202
    orphan = hr.open("HR", "incremental")
    other_client = other.open("HR", "incremental")  # same agent name, not ours
    rerun = hr.open("HR", "incremental")
    state = hr.state(orphan)
    assert state["state"] == "cancelled"
    assert "interrupted run" in state["reason"] and rerun in state["reason"]
    # Committed: never an orphan (and, the orphan gone, the worker may already take it).
    assert hr.state(committed)["state"] in ("queued", "processing", "done")
    assert other.state(other_client)["state"] == "open"
    assert other.post(f"/api/sessions/{other_client}/cancel").status_code == 200
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
    clients: tuple[Api, Api, Api], tmp_path: Path
) -> None:
    hr, other, operator = clients  # HR was loaded by agent-1
    before = hr.get("/api/connectors/HR/sessions").json()
    for client in (hr, other, operator):  # the agent decides, whichever client it uses
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
    clients: tuple[Api, Api, Api],
) -> None:
    hr, _other, _operator = clients
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
    clients: tuple[Api, Api, Api],
) -> None:
    hr, _other, operator = clients
    takeover = hr.post("/api/connectors/HR/sessions", json={"agent": "host-2", "mode": "initial"})
    assert takeover.status_code == 201
    assert operator.post(f"/api/sessions/{takeover.json()['id']}/cancel").status_code == 200
    refused = hr.post(
        "/api/connectors/HR/sessions", json={"agent": "host-2", "mode": "incremental"}
    )
    assert refused.status_code == 409 and refused.json()["agent"] == "agent-1"
    assert hr.open("HR", "incremental")  # agent-1 still delivers it


def test_a_connector_never_delivered_takes_any_agent(clients: tuple[Api, Api, Api]) -> None:
    _hr, _other, operator = clients
    first = operator.open("AD", "incremental", agent="host-7")  # AD has no session yet
    assert operator.state(first)["state"] == "open"


def test_a_server_without_an_operator_client_says_so_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="prepsync"):
        create_app(write_config(tmp_path), tmp_path / "data", operator_profile="Auditor")
    assert "no OpenIdClient has Profile='Auditor'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="prepsync"):
        create_app(tmp_path / "config.xml", tmp_path / "data")  # Administrator: "operator"
    assert "Profile=" not in caplog.text
