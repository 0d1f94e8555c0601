"""Reviewing a session: GET /api/sessions/{id}/changes, the counts, and the status page."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from serverutil import HR_SECRET, Api, csv_bytes, running
from test_server_app import ENTRIES, MEMBERS, PEOPLE, api, entries, members, people

__all__ = ["api"]  # the fixture, shared with test_server_app

BASE = [(str(i), f"name{i}") for i in range(1, 7)]  # ids 1..6


def rows(response_text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response_text)))


def blocked_complete(api: Api) -> str:
    """HR_people (MaximumDeletedLines=1) loaded, then a complete load with 2 deletes."""
    assert api.state(api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": people(*BASE)}))[
        "state"
    ] == ("done")
    day = [("1", "name1"), ("2", "renamed"), ("3", "name3"), ("5", "name5"), ("7", "n7")]
    day.append(("8", "comma, quoted"))
    session = api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": people(*day)})
    assert api.state(session)["state"] == "blocked"
    return session


def test_changes_of_a_blocked_complete_session_in_key_order(api: Api) -> None:
    session = blocked_complete(api)
    answer = api.operator().get(f"/api/sessions/{session}/changes", params={"table": PEOPLE})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert rows(answer.text) == [
        ["command", "id", "name"],
        ["update", "2", "renamed"],
        ["delete", "4", "name4"],  # a delete shows the row as stored
        ["delete", "6", "name6"],
        ["insert", "7", "n7"],
        ["insert", "8", "comma, quoted"],
    ]
    # The table is the only one the connector has: it may be left out.
    assert api.operator().get(f"/api/sessions/{session}/changes").text == answer.text
    deletes = api.operator().get(f"/api/sessions/{session}/changes", params={"command": "DELETE"})
    assert rows(deletes.text)[1:] == [["delete", "4", "name4"], ["delete", "6", "name6"]]
    # The counts and every crossed threshold are in the session's state.
    state = api.state(session)
    assert state["tables"] == {
        PEOPLE: {"inserted": 2, "updated": 1, "deleted": 2, "rows": 6},
    }
    assert state["thresholds"] == [
        "entity type mapping HR_Person (table HR_people): MaximumDeletedLines 1 < 2 deleted "
        "resources"
    ]
    # Forced: applied, and then there is nothing left to review.
    assert api.operator().post(f"/api/sessions/{session}/force").status_code == 202
    assert api.wait(session)["state"] == "done"
    gone = api.operator().get(f"/api/sessions/{session}/changes")
    assert gone.status_code == 409 and gone.json()["state"] == "done"


def test_changes_are_paged_by_key(api: Api) -> None:
    session = blocked_complete(api)
    operator = api.operator()
    path = f"/api/sessions/{session}/changes"
    seen: list[list[str]] = []
    after = None
    pages = 0
    while True:
        params = {"limit": "2", **({} if after is None else {"after": after})}
        answer = operator.get(path, params=params)
        assert answer.status_code == 200, answer.text
        page = rows(answer.text)
        assert page[0] == ["command", "id", "name"]
        seen.extend(page[1:])
        pages += 1
        after = answer.headers.get("Prepsync-Next-After")
        if after is None:
            break
        assert len(page) == 3 and after == page[-1][1]
    assert pages == 3
    assert seen == rows(operator.get(path).text)[1:]
    # Paging composes with a command filter.
    first = operator.get(path, params={"command": "delete", "limit": "1"})
    assert rows(first.text)[1:] == [["delete", "4", "name4"]]
    rest = operator.get(
        path,
        params={"command": "delete", "after": first.headers["Prepsync-Next-After"]},
    )
    assert rows(rest.text)[1:] == [["delete", "6", "name6"]]
    assert "Prepsync-Next-After" not in rest.headers


def test_changes_of_an_incremental_session_resolve_merge(
    tmp_path: Path, store_url: str | None
) -> None:
    with running(tmp_path, store_url) as api:
        api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": people(*BASE)})
        delta = csv_bytes(
            ["command", "id", "name"],
            [("delete", "1", "name1"), ("merge", "2", "two"), ("delete", "3", "x"),
             ("merge", "9", "nine")],
        )  # fmt: skip
        session = api.send("HR", "incremental", {f"{PEOPLE}.sorted.delta.csv": delta})
        assert api.state(session)["state"] == "blocked"
        path = f"/api/sessions/{session}/changes"
        answer = api.operator().get(path, params={"table": "hr_PEOPLE"})
        assert rows(answer.text) == [
            ["command", "id", "name"],
            ["delete", "1", "name1"],
            ["update", "2", "two"],
            ["delete", "3", "name3"],
            ["insert", "9", "nine"],
        ]


def test_changes_need_a_table_when_several_are_carried(
    tmp_path: Path, store_url: str | None
) -> None:
    with running(tmp_path, store_url) as api:
        operator = api.operator()
        holder = operator.open("AD", "incremental")  # the next one waits behind it
        not_committed = operator.get(f"/api/sessions/{holder}/changes")
        assert not_committed.status_code == 409
        files = {
            f"{ENTRIES}.sorted.delta.csv": csv_bytes(["command", "objectGUID", "dn"], []),
            f"{MEMBERS}.sorted.delta.csv": csv_bytes(
                ["command", "dn", "member"], [("insert", "CN=g", "CN=1")]
            ),
        }
        session = api.send("AD", "incremental", files, wait=False)
        path = f"/api/sessions/{session}/changes"
        assert api.state(session)["state"] == "queued"
        missing = operator.get(path)
        assert missing.status_code == 400 and ENTRIES in missing.text and MEMBERS in missing.text
        # Reviewed before it is processed: against the store as it is (empty).
        answer = operator.get(path, params={"table": MEMBERS})
        assert rows(answer.text) == [["command", "dn", "member"], ["insert", "CN=g", "CN=1"]]
        for params, status in [
            ({"table": "nope"}, 404),
            ({"table": ENTRIES, "command": "upsert"}, 400),
            ({"table": ENTRIES, "limit": "0"}, 400),
            ({"table": ENTRIES, "after": ""}, 400),
        ]:
            assert operator.get(path, params=params).status_code == status, params


def test_only_operators_of_the_connector_may_review(tmp_path: Path, store_url: str | None) -> None:
    with running(tmp_path, store_url) as api:
        session = blocked_complete(api)
        path = f"/api/sessions/{session}/changes"
        assert api.operator().get(path).status_code == 200
        # Delivering clients allowed on HR, the session's own client included: 403, a reason.
        for client in (api, Api(api.http, "hr-only", HR_SECRET)):
            refused = client.get(path)
            assert refused.status_code == 403, refused.text
            assert "reading a session's changes needs an operator" in refused.json()["error"]
        ad = api.send(
            "AD",
            "complete",
            {
                f"{ENTRIES}.sorted.csv": entries(("g1", "CN=1")),
                f"{MEMBERS}.sorted.csv": members(),
            },
        )
        refused = Api(api.http, "hr-only", HR_SECRET).get(f"/api/sessions/{ad}/changes")
        assert refused.status_code == 403 and "may not use connector" in refused.text


def test_status_page_lists_blocked_sessions_first_with_the_commands(
    tmp_path: Path, store_url: str | None
) -> None:
    with running(tmp_path, store_url) as api:
        session = blocked_complete(api)
        page = api.http.get("/").text
        blocked_at = page.index("Needs attention (1)")
        assert blocked_at < page.index("Connector AD")
        assert "MaximumDeletedLines 1 &lt; 2 deleted resources" in page
        assert "2 inserted, 1 updated, 2 deleted" in page
        target = "--api-url http://testserver --api-client-id operator"
        for command in (
            f"prepsync sessions changes {session} --table {PEOPLE} {target}",
            f"prepsync sessions force {session} {target}",
            f"prepsync sessions cancel {session} {target}",
        ):
            assert command in page
        assert api.operator().post(f"/api/sessions/{session}/cancel").status_code == 200
        assert "Needs attention" not in api.http.get("/").text
