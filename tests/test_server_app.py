"""The server's HTTP contract (REFERENCE §7), in process: Starlette's TestClient, real worker."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from serverutil import HR_SECRET, Api, csv_bytes, hash_secret, running, xxh3

from prepsync.server.tokens import TokenSigner, load_or_create_key

ENTRIES = "ADExport_entries"
MEMBERS = "ADExport_members"
PEOPLE = "HR_people"


@pytest.fixture
def api(tmp_path: Path, store_url: str | None) -> Iterator[Api]:
    """A server on each store (SQLite, then PostgreSQL)."""
    with running(tmp_path, store_url) as driver:
        yield driver


def set_state(tmp_path: Path, database: str | None, session_id: str, state: str) -> None:
    """Write a session's state behind the server's back (what a crash leaves)."""
    if database is None:
        with sqlite3.connect(tmp_path / "data" / "sessions.sqlite3") as connection:
            connection.execute("UPDATE sessions SET state = ? WHERE id = ?", (state, session_id))
        return
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute(
            "UPDATE prepsync.sessions SET state = %s WHERE id = %s", (state, session_id)
        )


def entries(*rows: tuple[str, str]) -> bytes:
    return csv_bytes(["objectGUID", "dn"], rows)


def entries_delta(*rows: tuple[str, str, str]) -> bytes:
    return csv_bytes(["command", "objectGUID", "dn"], rows)


def members(*rows: tuple[str, str]) -> bytes:
    return csv_bytes(["dn", "member"], rows)


def people(*rows: tuple[str, str]) -> bytes:
    return csv_bytes(["id", "name"], rows)


def people_delta(*rows: tuple[str, str, str]) -> bytes:
    return csv_bytes(["command", "id", "name"], rows)


def load_ad(api: Api, entry_rows: list[tuple[str, str]], member_rows: list[tuple[str, str]]) -> str:
    session_id = api.send(
        "AD",
        "complete",
        {
            f"{ENTRIES}.sorted.csv": entries(*entry_rows),
            f"{MEMBERS}.sorted.csv": members(*member_rows),
        },
    )
    state = api.state(session_id)
    assert state["state"] == "done", state
    return session_id


# ------------------------------------------------------------------------------ authentication


def test_token_flow(api: Api) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "agent",
        "client_secret": "wrong",
        "scope": "usercube_api",
    }
    response = api.http.post("/connect/token", data=form)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert api.http.post("/connect/token", data={**form, "client_id": "nobody"}).status_code == 401
    good = {**form, "client_secret": api.secret}
    assert (
        api.http.post("/connect/token", data={**good, "grant_type": "password"}).status_code == 400
    )
    assert api.http.post("/connect/token", data={**good, "scope": "other"}).status_code == 400
    assert api.http.post("/connect/token", json=good).status_code == 400  # not a form
    response = api.http.post("/connect/token", data=good)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"]
    # RFC 6749 client authentication with HTTP Basic works too.
    basic = api.http.post(
        "/connect/token",
        data={"grant_type": "client_credentials", "scope": "usercube_api"},
        auth=("agent", api.secret),
    )
    assert basic.status_code == 200


def test_api_needs_a_valid_token(api: Api, tmp_path: Path) -> None:
    path = "/api/connectors/AD/mappings"
    response = api.http.get(path)
    assert response.status_code == 401 and "error" in response.json()
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.http.get(path, headers={"Authorization": "Bearer nonsense"}).status_code == 401
    signer = TokenSigner(load_or_create_key(tmp_path / "data"))
    hashed = hash_secret(api.secret)
    expired = signer.issue("agent", hashed, 60, now=time.time() - 3600)
    assert api.http.get(path, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    forged = TokenSigner(b"x" * 32).issue("agent", hashed, 3600)
    assert api.http.get(path, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    ghost = signer.issue("removed-client", hashed, 3600)  # genuine signature, no such client
    assert api.http.get(path, headers={"Authorization": f"Bearer {ghost}"}).status_code == 401
    assert api.get(path).status_code == 200


def test_a_secret_rotation_ends_the_tokens_issued_for_the_old_secret(tmp_path: Path) -> None:
    path = "/api/connectors/AD/mappings"
    with running(tmp_path) as api:
        old_token = api.token()
        assert api.get(path).status_code == 200
        operator_token = api.operator().token()
    config = tmp_path / "config.xml"
    config.write_text(
        config.read_text().replace(hash_secret(api.secret), hash_secret("the-new-secret"))
    )
    with running(tmp_path) as api:  # the restart that reads the new HashedSecret
        stale = api.http.get(path, headers={"Authorization": f"Bearer {old_token}"})
        assert stale.status_code == 401 and "invalid or expired token" in stale.text
        refused = api.http.post(
            "/connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "agent",
                "client_secret": api.secret,
                "scope": "usercube_api",
            },
        )
        assert refused.status_code == 401
        rotated = Api(api.http, "agent", "the-new-secret")
        assert rotated.get(path).status_code == 200
        # The other clients' secrets did not change: their tokens live on.
        kept = api.http.get(path, headers={"Authorization": f"Bearer {operator_token}"})
        assert kept.status_code == 200


def test_clients_are_limited_to_their_connectors(api: Api) -> None:
    hr = Api(api.http, "hr-only", HR_SECRET)
    assert hr.get("/api/connectors/HR/mappings").status_code == 200
    assert hr.get("/api/connectors/AD/mappings").status_code == 403
    assert (
        hr.post("/api/connectors/AD/sessions", json={"agent": "a", "mode": "complete"}).status_code
        == 403
    )
    assert hr.get(f"/api/connectors/AD/tables/{ENTRIES}/resources").status_code == 403
    session_id = api.open("AD", "complete")
    assert hr.get(f"/api/sessions/{session_id}").status_code == 403
    assert hr.post(f"/api/sessions/{session_id}/cancel").status_code == 403
    assert hr.put_chunk(session_id, f"{ENTRIES}.sorted.csv", b"x", 0, 1).status_code == 403
    assert api.get("/api/connectors/NOPE/mappings").status_code == 404
    assert api.get("/api/sessions/0f8fad5b-d9cb-469f-a165-70867728950e").status_code == 404
    assert api.get("/api/sessions/not-a-guid").status_code == 404


def test_mappings_are_the_configuration_as_json(api: Api) -> None:
    document = api.get("/api/connectors/HR/mappings").json()
    assert document["connector"] == "HR"
    (person,) = document["entityTypeMappings"]
    assert person["connectionTable"] == PEOPLE and person["primaryKeys"] == ["id"]
    assert person["thresholds"]["MaximumDeletedLines"] == 1


# ------------------------------------------------------------------------------ sessions


def test_session_lifecycle_and_listing(api: Api, tmp_path: Path) -> None:
    response = api.post("/api/connectors/AD/sessions", json={"agent": "host-1", "mode": "Complete"})
    assert response.status_code == 201
    first = response.json()["id"]
    assert (tmp_path / "data" / "sessions" / first).is_dir()
    assert api.state(first) | {"state": "open", "mode": "complete", "connector": "AD"} == api.state(
        first
    )
    second = api.open("AD", "incremental", agent="host-1")
    listed = api.get("/api/connectors/AD/sessions").json()
    assert [item["id"] for item in listed] == [second, first]  # newest first
    assert api.get("/api/connectors/HR/sessions").json() == []
    for bad in [
        {"agent": "a", "mode": "full"},
        {"agent": "", "mode": "complete"},
        {"mode": "complete"},
    ]:
        assert api.post("/api/connectors/AD/sessions", json=bad).status_code == 400
    assert api.post("/api/connectors/AD/sessions", content=b"{nope").status_code == 400


def test_chunked_upload_resumes_and_tolerates_a_repeated_chunk(api: Api, tmp_path: Path) -> None:
    data = entries(*((f"id{n:04d}", f"cn=user {n}") for n in range(500)))
    name = f"{ENTRIES}.sorted.csv"
    session_id = api.open("AD", "complete")
    path = f"/api/sessions/{session_id}/files/{name}"
    assert api.get(path).status_code == 404  # nothing arrived yet
    assert api.put_chunk(session_id, name, data[:4000], 0, len(data)).status_code == 200
    assert api.get(path).json() == {"name": name, "size": 4000}
    # A gap is refused and says where to resume.
    gap = api.put_chunk(session_id, name, data[5000:6000], 5000, len(data))
    assert gap.status_code == 416 and gap.json()["size"] == 4000
    # Resume from the reported size; then send the same chunk again: harmless.
    assert api.put_chunk(session_id, name, data[4000:8000], 4000, len(data)).status_code == 200
    assert api.put_chunk(session_id, name, data[4000:8000], 4000, len(data)).status_code == 200
    assert api.put_chunk(session_id, name, data[8000:], 8000, len(data)).json()["size"] == len(data)
    api.upload(session_id, f"{MEMBERS}.sorted.csv", members(("cn=a", "cn=b")))
    files = {name: data, f"{MEMBERS}.sorted.csv": members(("cn=a", "cn=b"))}
    assert (tmp_path / "data" / "sessions" / session_id / name).read_bytes() == data
    committed = api.commit(session_id, files)
    assert committed.status_code == 202 and committed.json()["state"] in {
        "queued",
        "processing",
        "done",
    }
    again = api.commit(session_id, files)
    assert again.status_code == 200 and again.json()["id"] == session_id
    late = api.put_chunk(session_id, name, data[:10], 0, len(data))
    assert late.status_code == 409
    assert api.wait(session_id)["state"] == "done"
    assert api.resources("AD", ENTRIES) == data
    # Done: the worker removes the uploads just after it records the state.
    uploads = tmp_path / "data" / "sessions" / session_id
    deadline = time.monotonic() + 10
    while uploads.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not uploads.exists()


def test_upload_without_content_range_is_the_whole_file(api: Api) -> None:
    session_id = api.open("AD", "incremental")
    name = f"{ENTRIES}.sorted.delta.csv"
    assert api.put(f"/api/sessions/{session_id}/files/{name}", b"x" * 100).json()["size"] == 100
    assert api.put(f"/api/sessions/{session_id}/files/{name}", b"yy").json()["size"] == 2
    bad = api.put(
        f"/api/sessions/{session_id}/files/{name}", b"abc", {"Content-Range": "bytes 0-9/10"}
    )
    assert bad.status_code == 400


def test_file_names_must_be_the_sessions_tables(api: Api) -> None:
    complete = api.open("AD", "complete")
    # Same agent, another client: the complete session is not cancelled as its orphan.
    operator = api.operator()
    incremental = operator.open("AD", "incremental")
    for driver, session_id, name in [
        (api, complete, f"{ENTRIES}.sorted.delta.csv"),
        (operator, incremental, f"{ENTRIES}.sorted.csv"),
        (api, complete, "Other.sorted.csv"),
        (api, complete, f"{ENTRIES}.nullpk.csv"),
    ]:
        assert driver.put_chunk(session_id, name, b"x", 0, 1).status_code == 400
    # Table names match case-insensitively, like everything in the configuration.
    assert api.put_chunk(complete, "adexport_ENTRIES.sorted.csv", b"x", 0, 1).status_code == 200


def test_commit_checks_sizes_and_hashes(api: Api) -> None:
    data = entries(("a", "cn=a"))
    other = members(("cn=a", "cn=b"))
    name = f"{ENTRIES}.sorted.csv"
    session_id = api.open("AD", "complete")
    api.upload(session_id, name, data[:-1])  # the last byte never arrived
    api.upload(session_id, f"{MEMBERS}.sorted.csv", other)
    listing = [
        {"name": name, "size": len(data), "xxh3_128": xxh3(data)},
        {"name": f"{MEMBERS}.sorted.csv", "size": len(other), "xxh3_128": xxh3(other)},
    ]
    short = api.post(f"/api/sessions/{session_id}/commit", json={"files": listing})
    assert short.status_code == 422 and short.json()["file"] == name
    assert short.json()["size"] == len(data) - 1
    api.put_chunk(session_id, name, data[-1:], len(data) - 1, len(data))
    wrong = [dict(listing[0], xxh3_128="0" * 32), listing[1]]
    mismatch = api.post(f"/api/sessions/{session_id}/commit", json={"files": wrong})
    assert mismatch.status_code == 422 and mismatch.json()["file"] == name
    twice = api.post(f"/api/sessions/{session_id}/commit", json={"files": listing + listing})
    assert twice.status_code == 422 and "listed twice" in twice.json()["error"]
    for bad in [{"files": "x"}, {"files": [{"name": name, "size": -1, "xxh3_128": "0" * 32}]}, {}]:
        assert api.post(f"/api/sessions/{session_id}/commit", json=bad).status_code == 400
    assert api.state(session_id)["state"] == "open"  # a refused commit leaves it open
    assert (
        api.post(f"/api/sessions/{session_id}/commit", json={"files": listing}).status_code == 202
    )
    assert api.wait(session_id)["state"] == "done"


def test_commit_of_a_file_that_never_arrived(api: Api) -> None:
    session_id = api.open("AD", "incremental")
    response = api.commit(session_id, {f"{ENTRIES}.sorted.delta.csv": b"command,objectGUID,dn\n"})
    assert response.status_code == 422 and "not uploaded" in response.json()["error"]


# ------------------------------------------------------------------------------ applying


def sort_key(row: tuple[str, ...], positions: list[int]) -> list[bytes]:
    return [row[position].encode("utf-8") for position in positions]


def test_complete_then_incrementals_equal_the_expected_csv(api: Api) -> None:
    # Values that exercise quoting, non-ASCII order and prefix order (REFERENCE §2).
    store = {
        "a": "cn=a,ou=x",
        "ab": 'say "hi"',
        "a\u00e9": "multi\nline",
        "b": "",
        "\u4e2d": "cn=zh",
        "Z": "upper",
    }
    member_rows = {("cn=a", "cn=b"), ("cn=a", "cn=a"), ("cn=ab", "cn=\u00e9"), ("cn=a,x", "q")}
    load_ad(api, sorted(store.items()), sorted(member_rows))
    changes = [
        [("insert", "c", "new"), ("update", "a", "changed, quoted"), ("delete", "b", "")],
        [
            ("merge", "c", "merged"),
            ("merge", "d", "inserted by merge"),
            ("delete", "ab", 'say "hi"'),
        ],
    ]
    for delta in changes:
        session_id = api.send(
            "AD", "incremental", {f"{ENTRIES}.sorted.delta.csv": entries_delta(*delta)}
        )
        assert api.state(session_id)["state"] == "done", api.state(session_id)
        for command, key, value in delta:
            if command == "delete":
                del store[key]
            else:
                store[key] = value
    member_delta = csv_bytes(
        ["command", "dn", "member"], [("delete", "cn=a", "cn=b"), ("insert", "cn=", "x")]
    )
    session_id = api.send("AD", "incremental", {f"{MEMBERS}.sorted.delta.csv": member_delta})
    assert api.state(session_id)["state"] == "done"
    member_rows -= {("cn=a", "cn=b")}
    member_rows |= {("cn=", "x")}
    expected_entries = entries(*sorted(store.items(), key=lambda row: sort_key(row, [0])))
    expected_members = members(*sorted(member_rows, key=lambda row: sort_key(row, [0, 1])))
    assert api.resources("AD", ENTRIES) == expected_entries
    assert api.resources("AD", MEMBERS) == expected_members


def test_resources_of_an_unloaded_or_unknown_table(api: Api) -> None:
    assert api.resources("AD", ENTRIES) == b"objectGUID,dn\n"
    assert api.get("/api/connectors/AD/tables/Nope/resources").status_code == 404


def test_resources_stream_a_large_table(api: Api) -> None:
    rows = [(f"k{n:06d}", f"value {n}") for n in range(30_000)]
    load_ad(api, rows, [])
    with api.http.stream(
        "GET", f"/api/connectors/AD/tables/{ENTRIES}/resources", headers=api.auth
    ) as response:
        pieces = list(response.iter_raw())
    assert len(pieces) > 1  # streamed in pieces, not one body
    assert b"".join(pieces) == entries(*rows)


def test_failed_incremental_is_rolled_back(api: Api) -> None:
    load_ad(api, [("a", "1"), ("b", "2")], [])
    before = api.resources("AD", ENTRIES)
    delta = entries_delta(("insert", "c", "3"), ("delete", "a", "1"), ("update", "zz", "missing"))
    session_id = api.send("AD", "incremental", {f"{ENTRIES}.sorted.delta.csv": delta})
    state = api.state(session_id)
    assert state["state"] == "failed"
    assert "line 4" in state["reason"] and "update" in state["reason"]
    assert api.resources("AD", ENTRIES) == before


@pytest.mark.parametrize(
    ("delta", "reason"),
    [
        (entries_delta(("insert", "a", "dup")), "insert of a key already stored"),
        (entries_delta(("delete", "zz", "")), "delete of a key not stored"),
        (entries_delta(("upsert", "q", "1")), "invalid command"),
        (entries_delta(("insert", "", "1")), "null key"),
        (csv_bytes(["command", "objectGUID"], [("insert", "q")]), "header differs"),
        (csv_bytes(["objectGUID", "dn"], [("q", "1")]), "first column must be 'command'"),
        (b"command,objectGUID,dn\ninsert,q\n", "expected 3 fields"),
        (b'command,objectGUID,dn\ninsert,"q,1\n', "line 2"),
        (b"command,objectGUID,dn\ninsert,\xff,1\n", "invalid UTF-8"),
        (b"", "empty file"),
    ],
)
def test_bad_deltas_fail_with_a_reason(api: Api, delta: bytes, reason: str) -> None:
    load_ad(api, [("a", "1"), ("b", "2")], [])
    before = api.resources("AD", ENTRIES)
    session_id = api.open("AD", "incremental")
    name = f"{ENTRIES}.sorted.delta.csv"
    assert api.put(f"/api/sessions/{session_id}/files/{name}", delta).status_code == 200
    assert api.commit(session_id, {name: delta}).status_code == 202
    state = api.wait(session_id)
    assert state["state"] == "failed" and reason in state["reason"], state
    assert api.resources("AD", ENTRIES) == before


def test_after_lost_changes_deltas_fail_until_a_complete_load(api: Api) -> None:
    load_ad(api, [("a", "1")], [])
    name = f"{ENTRIES}.sorted.delta.csv"
    bad = api.send("AD", "incremental", {name: entries_delta(("update", "zz", "x"))})
    assert api.state(bad)["state"] == "failed"
    # The agent advanced its baseline at the commit: the next delta builds on lost changes.
    good = api.send("AD", "incremental", {name: entries_delta(("insert", "b", "2"))})
    state = api.state(good)
    assert state["state"] == "failed" and bad in state["reason"]
    assert "complete synchronization" in state["reason"]
    load_ad(api, [("a", "1"), ("b", "2")], [])
    after = api.send("AD", "incremental", {name: entries_delta(("insert", "c", "3"))})
    assert api.state(after)["state"] == "done"
    # A committed delta cancelled by hand is lost too.
    operator = api.operator()
    holder = operator.open("AD", "incremental")  # not the sender's client: kept open
    waiting = api.send("AD", "incremental", {name: entries_delta(("insert", "d", "4"))}, wait=False)
    assert operator.post(f"/api/sessions/{waiting}/cancel").status_code == 200
    assert operator.post(f"/api/sessions/{holder}/cancel").status_code == 200
    next_one = api.send("AD", "incremental", {name: entries_delta(("insert", "e", "5"))})
    assert waiting in api.state(next_one)["reason"]
    assert api.resources("AD", ENTRIES) == entries(("a", "1"), ("b", "2"), ("c", "3"))


def test_complete_must_carry_every_table_and_unique_keys(api: Api) -> None:
    session_id = api.send("AD", "complete", {f"{ENTRIES}.sorted.csv": entries(("a", "1"))})
    state = api.state(session_id)
    assert state["state"] == "failed" and f"{MEMBERS}.sorted.csv" in state["reason"]
    duplicate = {
        f"{ENTRIES}.sorted.csv": entries(("a", "1"), ("a", "2")),
        f"{MEMBERS}.sorted.csv": members(),
    }
    state = api.state(api.send("AD", "complete", duplicate))
    assert state["state"] == "failed" and "duplicate key" in state["reason"]
    assert api.resources("AD", ENTRIES) == b"objectGUID,dn\n"


def test_complete_replaces_rows_and_follows_a_new_header_order(api: Api) -> None:
    load_ad(api, [("a", "1"), ("b", "2")], [("x", "2"), ("y", "1")])
    reordered = {
        f"{ENTRIES}.sorted.csv": csv_bytes(["DN", "objectGUID"], [("1", "a"), ("3", "c")]),
        f"{MEMBERS}.sorted.csv": csv_bytes(["member", "dn"], [("1", "y"), ("2", "x")]),
    }
    state = api.state(api.send("AD", "complete", reordered))
    assert state["state"] == "done"
    assert state["tables"][ENTRIES] == {"inserted": 1, "updated": 0, "deleted": 1, "rows": 2}
    assert state["tables"][MEMBERS] == {
        "inserted": 0,
        "updated": 0,
        "deleted": 0,
        "rows": 2,
        "links": {"AD_Entry_member": {"inserted": 0, "deleted": 0}},
    }
    assert api.resources("AD", ENTRIES) == b"DN,objectGUID\n1,a\n3,c\n"
    assert api.resources("AD", MEMBERS) == b"member,dn\n1,y\n2,x\n"  # keyed in the new order
    # An incremental in the new order applies; its values land in the stored column order.
    delta = csv_bytes(["command", "objectGUID", "dn"], [("update", "c", "33")])
    assert (
        api.state(api.send("AD", "incremental", {f"{ENTRIES}.sorted.delta.csv": delta}))["state"]
        == "done"
    )
    assert api.resources("AD", ENTRIES) == b"DN,objectGUID\n1,a\n33,c\n"


def test_threshold_blocks_until_forced_and_later_incrementals_wait(api: Api) -> None:
    base = [("1", "ann"), ("2", "bob"), ("3", "cy"), ("4", "di")]
    assert (
        api.state(api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": people(*base)}))["state"]
        == "done"
    )
    big_delete = people_delta(("delete", "1", "ann"), ("delete", "2", "bob"))
    blocked = api.send("HR", "incremental", {f"{PEOPLE}.sorted.delta.csv": big_delete})
    state = api.state(blocked)
    assert state["state"] == "blocked"
    assert state["reason"] == (
        "entity type mapping HR_Person (table HR_people): MaximumDeletedLines 1 < 2 deleted "
        "resources"
    )
    assert api.resources("HR", PEOPLE) == people(*base)  # nothing applied
    later = api.send(
        "HR",
        "incremental",
        {f"{PEOPLE}.sorted.delta.csv": people_delta(("update", "3", "cyd"))},
        wait=False,
    )
    # The worker claims the queued session of lowest seq it may apply: once a session opened
    # after ``later`` is done, the worker has passed ``later`` over.
    load_ad(api, [("a", "1")], [])
    assert api.state(later)["state"] == "queued"  # waits behind the blocked one
    operator = api.operator()
    assert operator.post(f"/api/sessions/{later}/force").status_code == 409  # not blocked
    forced = operator.post(f"/api/sessions/{blocked}/force")
    assert forced.status_code == 202
    assert api.wait(blocked)["state"] == "done"
    assert api.wait(later)["state"] == "done"
    assert api.resources("HR", PEOPLE) == people(("3", "cyd"), ("4", "di"))
    # Percentage: 3 inserts on 2 stored rows = 150% > MaxPercentageInsertedLines=50.
    inserts = people_delta(("insert", "5", "e"), ("insert", "6", "f"), ("insert", "7", "g"))
    state = api.state(api.send("HR", "incremental", {f"{PEOPLE}.sorted.delta.csv": inserts}))
    assert state["state"] == "blocked" and "MaxPercentageInsertedLines" in state["reason"]


def test_complete_thresholds_count_implied_changes_and_initial_skips_them(api: Api) -> None:
    base = [("1", "a"), ("2", "b"), ("3", "c")]
    assert (
        api.state(api.send("HR", "initial", {f"{PEOPLE}.sorted.csv": people(*base)}))["state"]
        == "done"
    )
    # Dropping two rows in a complete load = 2 implied deletes > MaximumDeletedLines=1.
    state = api.state(api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": people(("3", "c"))}))
    assert state["state"] == "blocked" and "1 < 2 deleted resources" in state["reason"]
    assert api.resources("HR", PEOPLE) == people(*base)
    state = api.state(api.send("HR", "initial", {f"{PEOPLE}.sorted.csv": people(("3", "c"))}))
    assert state["state"] == "done"
    assert api.resources("HR", PEOPLE) == people(("3", "c"))


def test_complete_cancels_open_queued_and_blocked_sessions(api: Api, tmp_path: Path) -> None:
    base = [("1", "a"), ("2", "b"), ("3", "c")]
    api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": people(*base)})
    two_deletes = people_delta(("delete", "1", "a"), ("delete", "2", "b"))
    blocked = api.send("HR", "incremental", {f"{PEOPLE}.sorted.delta.csv": two_deletes})
    assert api.state(blocked)["state"] == "blocked"
    queued = api.send(
        "HR",
        "incremental",
        {f"{PEOPLE}.sorted.delta.csv": people_delta(("insert", "9", "z"))},
        wait=False,
    )
    still_open = api.open("HR", "incremental")
    other_connector = api.open("AD", "incremental")
    complete = api.open("HR", "complete")
    for session_id in (blocked, queued, still_open):
        state = api.state(session_id)
        assert state["state"] == "cancelled" and complete in state["reason"]
        assert not (tmp_path / "data" / "sessions" / session_id).exists()
    assert api.state(other_connector)["state"] == "open"
    late = api.commit(queued, {f"{PEOPLE}.sorted.delta.csv": people_delta(("insert", "9", "z"))})
    assert late.status_code == 200 and late.json()["state"] == "cancelled"  # committed, then moot
    assert api.commit(still_open, {}).status_code == 409  # cancelled before any commit
    api.upload(complete, f"{PEOPLE}.sorted.csv", people(("7", "q")))
    operator = api.operator()
    assert operator.post(f"/api/sessions/{complete}/force").status_code == 409
    # 1 insert (33% of 3 stored, under 50%) but 3 implied deletes (over 1): blocked, then forced.
    assert api.commit(complete, {f"{PEOPLE}.sorted.csv": people(("7", "q"))}).status_code == 202
    assert api.wait(complete)["state"] == "blocked"
    assert operator.post(f"/api/sessions/{complete}/force").status_code == 202
    assert api.wait(complete)["state"] == "done"
    assert api.resources("HR", PEOPLE) == people(("7", "q"))


def test_cancel(api: Api, tmp_path: Path) -> None:
    session_id = api.open("AD", "incremental")
    api.upload(session_id, f"{ENTRIES}.sorted.delta.csv", entries_delta(("insert", "a", "1")))
    response = api.post(f"/api/sessions/{session_id}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert not (tmp_path / "data" / "sessions" / session_id).exists()
    assert api.post(f"/api/sessions/{session_id}/cancel").status_code == 409
    assert api.put_chunk(session_id, f"{ENTRIES}.sorted.delta.csv", b"x", 0, 1).status_code == 409


# ------------------------------------------------------------------------------ ordering


def test_later_session_waits_for_an_earlier_open_one(api: Api) -> None:
    load_ad(api, [("a", "1")], [])
    operator = api.operator()
    earlier = operator.open("AD", "incremental")  # not the sender's client: kept open
    later = api.send(
        "AD",
        "incremental",
        {f"{ENTRIES}.sorted.delta.csv": entries_delta(("update", "b", "2"))},
        wait=False,
    )
    # Another connector is not held up.
    # And it is done after ``later`` was queued: the worker, which claims the queued session of
    # lowest seq it may apply, has passed ``later`` over.
    hr = api.send("HR", "initial", {f"{PEOPLE}.sorted.csv": people(("1", "x"))})
    assert api.state(hr)["state"] == "done"
    assert api.state(later)["state"] == "queued"
    # The earlier one inserts "b"; the later one updates it: only right in opening order.
    first = {f"{ENTRIES}.sorted.delta.csv": entries_delta(("insert", "b", "1"))}
    operator.upload(earlier, f"{ENTRIES}.sorted.delta.csv", first[f"{ENTRIES}.sorted.delta.csv"])
    assert operator.commit(earlier, first).status_code == 202
    assert operator.wait(earlier)["state"] == "done"
    assert api.wait(later)["state"] == "done"
    assert api.resources("AD", ENTRIES) == entries(("a", "1"), ("b", "2"))


def test_an_idle_open_session_is_abandoned_after_the_timeout(
    tmp_path: Path, store_url: str | None
) -> None:
    with running(tmp_path, store_url, session_timeout=1.0) as api:
        load_ad(api, [("a", "1")], [])
        operator = api.operator()
        idle = operator.open("AD", "incremental")  # not the sender's client: kept open
        later = api.send(
            "AD",
            "incremental",
            {f"{ENTRIES}.sorted.delta.csv": entries_delta(("delete", "a", "1"))},
            wait=False,
        )
        assert api.wait(later, timeout=10)["state"] == "done"
        state = operator.state(idle)
        assert state["state"] == "cancelled" and "abandoned" in state["reason"]
        assert not (tmp_path / "data" / "sessions" / idle).exists()


# ------------------------------------------------------------------------------ restart


def test_state_survives_a_restart_and_interrupted_sessions_run_again(
    tmp_path: Path, store_url: str | None
) -> None:
    with running(tmp_path, store_url) as api:
        load_ad(api, [("a", "1")], [])
        holder = api.operator().open("AD", "incremental")  # not the sender's client: kept open
        waiting = api.send(
            "AD",
            "incremental",
            {f"{ENTRIES}.sorted.delta.csv": entries_delta(("insert", "b", "2"))},
            wait=False,
        )
        token = api.token()
    # As if the server died while applying it: "processing" at the next start.
    set_state(tmp_path, store_url, waiting, "processing")
    with running(tmp_path, store_url) as api:
        api._token = token  # a token outlives the restart
        assert api.operator().state(holder)["state"] == "open"
        assert api.state(waiting)["state"] == "queued"  # re-queued, still behind the open one
        assert api.operator().post(f"/api/sessions/{holder}/cancel").status_code == 200
        assert api.wait(waiting)["state"] == "done"
        assert api.resources("AD", ENTRIES) == entries(("a", "1"), ("b", "2"))


def test_a_session_applied_just_before_a_crash_is_not_applied_twice(
    tmp_path: Path, store_url: str | None
) -> None:
    with running(tmp_path, store_url) as api:
        load_ad(api, [("a", "1")], [])
        session_id = api.send(
            "AD",
            "incremental",
            {f"{ENTRIES}.sorted.delta.csv": entries_delta(("insert", "b", "2"))},
        )
        assert api.state(session_id)["state"] == "done"
    # The rows committed, the crash came before the state did: the store remembers it applied.
    set_state(tmp_path, store_url, session_id, "processing")
    with running(tmp_path, store_url) as api:
        assert api.wait(session_id)["state"] == "done"
        assert api.resources("AD", ENTRIES) == entries(("a", "1"), ("b", "2"))


# ------------------------------------------------------------------------------ hostile input


def listing(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_traversal_attempts_write_nothing_outside_the_session(api: Api, tmp_path: Path) -> None:
    session_id = api.open("AD", "complete")
    before = listing(tmp_path)
    base = f"/api/sessions/{session_id}/files/"
    for name in [
        "..",
        "%2E%2E",
        "..%2Fevil.sorted.csv",
        "%2E%2E%2F%2E%2E%2Fevil.sorted.csv",
        "a%2Fb.sorted.csv",
        "%2Fetc%2Fevil.sorted.csv",
        "..%5Cevil.sorted.csv",
        "evil%00.sorted.csv",
        "sub/evil.sorted.csv",
    ]:
        response = api.put(base + name, b"x", {"Content-Range": "bytes 0-0/1"})
        assert response.status_code in (400, 404, 405), (name, response.status_code)
        assert "error" in response.json()
        if "%" in name:  # httpx resolves a literal "..": that GET would be another route
            assert api.get(base + name).status_code in (400, 404)
    assert api.put(f"/api/sessions/..%2F..%2Fx/files/{ENTRIES}.sorted.csv", b"x").status_code == 404
    assert listing(tmp_path) - before <= {"data/sessions.sqlite3-shm", "data/sessions.sqlite3-wal"}


def test_oversize_requests_are_refused(tmp_path: Path, store_url: str | None) -> None:
    with running(tmp_path, store_url, max_body=1024, max_file_size=4096) as api:
        session_id = api.open("AD", "complete")
        name = f"{ENTRIES}.sorted.csv"
        assert api.put_chunk(session_id, name, b"x" * 2048, 0, 2048).status_code == 413
        assert api.put(f"/api/sessions/{session_id}/files/{name}", b"x" * 2048).status_code == 413
        assert api.put_chunk(session_id, name, b"x" * 10, 0, 5000).status_code == 413  # total
        assert api.put_chunk(session_id, name, b"x" * 1000, 0, 4000).status_code == 200
        huge = {"files": [{"name": "x" * 2_000_000, "size": 0, "xxh3_128": "0" * 32}]}
        assert api.post(f"/api/sessions/{session_id}/commit", json=huge).status_code == 413
        form = {
            "grant_type": "client_credentials",
            "scope": "usercube_api",
            "client_secret": "x" * 100_000,
        }
        assert api.http.post("/connect/token", data=form).status_code == 413


def test_errors_are_json(api: Api) -> None:
    for response in [
        api.http.get("/no/such/route"),
        api.http.delete("/connect/token"),
        api.get("/api/connectors/NOPE/mappings"),
    ]:
        assert response.headers["content-type"].startswith("application/json")
        assert "error" in response.json()


def test_status_page_escapes_what_it_shows(api: Api) -> None:
    api.post(
        "/api/connectors/AD/sessions",
        json={"agent": "<script>alert(1)</script>", "mode": "complete"},
    )
    page = api.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert ENTRIES in page.text and "HR_people" in page.text
