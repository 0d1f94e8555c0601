"""Settling the session an interrupted run left behind (prepsync.sync.finish_interrupted)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from serverutil import mock_api

from prepsync.client import ApiClient
from prepsync.errors import ServerError
from prepsync.staging import working_lock
from prepsync.sync import SessionJournal, finish_interrupted

SESSION = "0f8fad5b-d9cb-469f-a165-70867728950e"


def client(answers: dict[tuple[str, str], httpx.Response], calls: list[str]) -> ApiClient:
    def handle(request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        return answers.get(key, httpx.Response(500, json={"error": "unexpected"}))

    return mock_api(handle, calls=calls)


def journal(working: Path, tables: list[dict[str, object]] | None) -> SessionJournal:
    entry = {"session": SESSION, "connector": "AD", "mode": "incremental", "tables": tables}
    (working / ".prepsync-session.json").write_text(json.dumps(entry))
    return SessionJournal(working)


def test_no_journal_asks_nothing(tmp_path: Path) -> None:
    calls: list[str] = []
    assert finish_interrupted(client({}, calls), tmp_path, tmp_path) is None
    assert calls == []


def test_session_unknown_to_the_server_is_forgotten(tmp_path: Path) -> None:
    calls: list[str] = []
    saved = journal(tmp_path, [{"table": "T", "sorted": "x", "change_file": False}])
    gone = {("GET", f"/api/sessions/{SESSION}"): httpx.Response(404, json={"error": "no"})}
    assert finish_interrupted(client(gone, calls), tmp_path, tmp_path) is None
    assert saved.read() is None
    assert not (tmp_path / "previous").exists()  # nothing was applied: baselines stay


def test_open_session_is_cancelled(tmp_path: Path) -> None:
    calls: list[str] = []
    saved = journal(tmp_path, None)
    answers = {
        ("GET", f"/api/sessions/{SESSION}"): httpx.Response(
            200, json={"id": SESSION, "connector": "AD", "mode": "incremental", "state": "open"}
        ),
        ("POST", f"/api/sessions/{SESSION}/cancel"): httpx.Response(
            200, json={"id": SESSION, "state": "cancelled"}
        ),
    }
    assert finish_interrupted(client(answers, calls), tmp_path, tmp_path) is None
    assert f"POST /api/sessions/{SESSION}/cancel" in calls
    assert saved.read() is None


def test_other_refusals_keep_the_journal(tmp_path: Path) -> None:
    saved = journal(tmp_path, None)
    forbidden = {("GET", f"/api/sessions/{SESSION}"): httpx.Response(403, json={"error": "no"})}
    with pytest.raises(ServerError) as refusal:
        finish_interrupted(client(forbidden, []), tmp_path, tmp_path)
    assert refusal.value.status == 403
    assert saved.read() is not None  # still unsettled: the next run asks again


def intent(working: Path) -> SessionJournal:
    """What a run killed between opening its session and recording the id leaves."""
    entry = {"session": None, "connector": "AD", "agent": "host-1", "mode": "incremental"}
    (working / ".prepsync-session.json").write_text(json.dumps({**entry, "tables": None}))
    return SessionJournal(working)


def listed(session_id: str, state: str, agent: str = "host-1", owner: str = "id") -> dict[str, str]:
    return {"id": session_id, "state": state, "agent": agent, "client": owner}


def test_an_opening_intent_cancels_only_this_agents_open_sessions(tmp_path: Path) -> None:
    calls: list[str] = []
    saved = intent(tmp_path)
    orphan, done, other_agent, other_client = (f"{n}{SESSION[1:]}" for n in "1234")
    sessions = [
        listed(orphan, "open"),
        listed(done, "done"),
        listed(other_agent, "open", agent="host-2"),
        listed(other_client, "open", owner="someone-else"),
    ]
    answers = {
        ("GET", "/api/connectors/AD/sessions"): httpx.Response(200, json=sessions),
        ("POST", f"/api/sessions/{orphan}/cancel"): httpx.Response(
            200, json={"id": orphan, "state": "cancelled"}
        ),
    }
    assert finish_interrupted(client(answers, calls), tmp_path, tmp_path) is None
    cancels = [call for call in calls if call.endswith("/cancel")]
    assert cancels == [f"POST /api/sessions/{orphan}/cancel"]
    assert saved.read() is None


def test_an_opening_intent_on_a_connector_closed_to_us_is_dropped(tmp_path: Path) -> None:
    saved = intent(tmp_path)
    closed = {("GET", "/api/connectors/AD/sessions"): httpx.Response(403, json={"error": "no"})}
    assert finish_interrupted(client(closed, []), tmp_path, tmp_path) is None
    assert saved.read() is None


def test_an_opening_intent_survives_an_unreachable_server(tmp_path: Path) -> None:
    saved = intent(tmp_path)
    with pytest.raises(ServerError):
        finish_interrupted(client({}, []), tmp_path, tmp_path)  # 500s until the budget is out
    assert saved.read() is not None


@pytest.mark.parametrize("mode", ["complete", "incremental"])
def test_committed_change_file_run_advances_only_a_replayed_table(
    tmp_path: Path, mode: str
) -> None:
    """A change file replayed in complete mode left a .sorted.csv that becomes the baseline
    once the session is known committed; an incremental change file has none, and moves none."""
    replayed = tmp_path / "T.sorted.csv"
    replayed.write_bytes(b"id,name\n1,a\n")
    sorted_path = str(replayed) if mode == "complete" else None
    saved = journal(tmp_path, [{"table": "T", "sorted": sorted_path, "change_file": True}])
    done = {
        ("GET", f"/api/sessions/{SESSION}"): httpx.Response(
            200, json={"id": SESSION, "connector": "AD", "mode": mode, "state": "done"}
        )
    }
    with working_lock(tmp_path):  # as synchronize() holds it
        assert finish_interrupted(client(done, []), tmp_path, tmp_path) == SESSION
    assert saved.read() is None
    baseline = tmp_path / "previous" / "T.sorted.csv"
    if mode == "complete":
        assert baseline.read_bytes() == b"id,name\n1,a\n"
    else:
        assert not baseline.exists()
