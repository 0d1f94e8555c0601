"""The real server (uvicorn in a child process on 127.0.0.1), driven over HTTP with httpx."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverutil import Api, ServerProcess, csv_bytes, write_config

ENTRIES = "ADExport_entries"
MEMBERS = "ADExport_members"


@pytest.fixture
def server(tmp_path: Path, store_url: str | None) -> Iterator[ServerProcess]:
    process = ServerProcess(
        write_config(tmp_path), tmp_path / "data", tmp_path / "server.log", database=store_url
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def entries(rows: list[tuple[str, str]]) -> bytes:
    return csv_bytes(["objectGUID", "dn"], rows)


def test_token_and_a_complete_then_incremental_run(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        bad = http.post(
            "/connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "agent",
                "client_secret": "nope",
                "scope": "usercube_api",
            },
        )
        assert bad.status_code == 401
        assert http.get("/api/connectors/AD/mappings").status_code == 401
        api = Api(http)
        assert api.get("/api/connectors/AD/mappings").json()["connector"] == "AD"
        rows = [(f"id{n:05d}", f'cn="user {n}",ou=x') for n in range(3000)]
        data = entries(rows)
        member_data = csv_bytes(["dn", "member"], [("cn=a", "cn=b")])
        session_id = api.open("AD", "complete")
        name = f"{ENTRIES}.sorted.csv"
        # An interrupted upload: the first 3 chunks, then a "new process" asks and resumes.
        chunk = 8192
        for start in range(0, 3 * chunk, chunk):
            api.put_chunk(session_id, name, data[start : start + chunk], start, len(data))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        api = Api(http)
        arrived = api.get(f"/api/sessions/{session_id}/files/{name}").json()["size"]
        assert arrived == 3 * chunk
        start = arrived - chunk  # resend the last chunk too: harmless
        for offset in range(start, len(data), chunk):
            response = api.put_chunk(
                session_id, name, data[offset : offset + chunk], offset, len(data)
            )
            assert response.status_code == 200
        api.upload(session_id, f"{MEMBERS}.sorted.csv", member_data)
        files = {name: data, f"{MEMBERS}.sorted.csv": member_data}
        assert api.commit(session_id, files).status_code == 202
        assert api.wait(session_id)["state"] == "done"
        delta = csv_bytes(
            ["command", "objectGUID", "dn"], [("delete", "id00000", ""), ("insert", "zz", "new")]
        )
        incremental = api.send("AD", "incremental", {f"{ENTRIES}.sorted.delta.csv": delta})
        assert api.state(incremental)["state"] == "done"
        assert api.resources("AD", ENTRIES) == entries([*rows[1:], ("zz", "new")])
        assert api.resources("AD", MEMBERS) == member_data
        listed = api.get("/api/connectors/AD/sessions").json()
        assert [item["id"] for item in listed] == [incremental, session_id]


def test_sigkill_while_processing_and_queued_then_restart_completes(
    tmp_path: Path, store_url: str | None
) -> None:
    server = ServerProcess(
        write_config(tmp_path), tmp_path / "data", tmp_path / "server.log", database=store_url
    )
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            api = Api(http)
            rows = [(f"{n:08d}", f"cn=user {n},ou=people") for n in range(120_000)]
            full = {
                f"{ENTRIES}.sorted.csv": entries(rows),
                f"{MEMBERS}.sorted.csv": csv_bytes(["dn", "member"], []),
            }
            delta = {
                f"{ENTRIES}.sorted.delta.csv": csv_bytes(
                    ["command", "objectGUID", "dn"], [("update", "00000007", "changed")]
                )
            }
            complete = api.open("AD", "complete")
            # Opened after: applied after (through another client: the same one's would
            # cancel it as an orphan).
            operator = api.operator()
            incremental = operator.open("AD", "incremental")
            for driver, session_id, files in (
                (api, complete, full),
                (operator, incremental, delta),
            ):
                for name, data in files.items():
                    driver.upload(session_id, name, data)
            assert operator.commit(incremental, delta).status_code == 202
            assert operator.state(incremental)["state"] == "queued"  # behind the open complete
            assert api.commit(complete, full).status_code == 202
            # The apply takes over a second: the kill lands in the middle of its transaction.
            assert api.wait(complete, frozenset({"processing", "done"}), timeout=30)["state"] == (
                "processing"
            )
            token = api.token()
        server.kill()
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            api = Api(http)
            api._token = token  # signed with the key kept in the data directory
            assert api.wait(complete, timeout=60)["state"] == "done"
            assert api.operator().wait(incremental, timeout=30)["state"] == "done"
            rows[7] = ("00000007", "changed")
            assert api.resources("AD", ENTRIES) == entries(rows)
            assert api.state(complete)["tables"][ENTRIES]["rows"] == len(rows)
    finally:
        server.stop()


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request sent byte for byte (no client-side path normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head.encode("latin-1") + b"\r\n" + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer


def test_raw_traversal_paths_are_refused(server: ServerProcess, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        api = Api(http)
        session_id = api.open("AD", "complete")
        token = api.token()
    before = sorted(str(path) for path in tmp_path.rglob("*") if "sqlite3" not in path.name)
    for target in [
        f"/api/sessions/{session_id}/files/../../../evil.sorted.csv",
        f"/api/sessions/{session_id}/files/..%2F..%2Fevil.sorted.csv",
        f"/api/sessions/{session_id}/files//tmp/evil.sorted.csv",
        f"/api/sessions/{session_id}/files/%2Ftmp%2Fevil.sorted.csv",
        f"/api/sessions/{session_id}/files/..",
        f"/api/sessions/../../files/{ENTRIES}.sorted.csv",
    ]:
        head = (
            f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Content-Range: bytes 0-0/1\r\nContent-Length: 1\r\nConnection: close\r\n"
        )
        status, _answer = raw_request(server.port, head, b"x")
        assert status in (400, 404), (target, status)
    after = sorted(str(path) for path in tmp_path.rglob("*") if "sqlite3" not in path.name)
    assert after == before
    assert not Path("/tmp/evil.sorted.csv").exists()


def test_oversize_chunk_is_413(tmp_path: Path) -> None:
    server = ServerProcess(
        write_config(tmp_path), tmp_path / "data", tmp_path / "server.log", max_body=4096
    )
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            api = Api(http)
            session_id = api.open("AD", "complete")
            response = api.put_chunk(session_id, f"{ENTRIES}.sorted.csv", b"x" * 8192, 0, 8192)
            assert response.status_code == 413 and "error" in response.json()
            assert api.state(session_id)["state"] == "open"
    finally:
        server.stop()


def test_the_operator_profile_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prepsync serve` with PREPSYNC_OPERATOR_PROFILE=Agent: the "agent" client (Profile
    Agent) settles sessions, the "operator" client (Profile Administrator) no longer does."""
    monkeypatch.setenv("PREPSYNC_OPERATOR_PROFILE", "Agent")
    server = ServerProcess(write_config(tmp_path), tmp_path / "data", tmp_path / "server.log")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            agent = Api(http)
            session = agent.open("AD", "complete")
            # An operator action reaches the state check: 409, not the 403 of a role.
            assert agent.post(f"/api/sessions/{session}/force").status_code == 409
            refused = agent.operator().post(f"/api/sessions/{session}/force")
            assert refused.status_code == 403
            assert refused.json()["operator_profile"] == "Agent"
    finally:
        server.stop()
