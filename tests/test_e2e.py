"""The whole chain: `prepsync prepare --api-url` against a real `prepsync serve` process.

After every synchronization the server's store (read back through the resources endpoint)
must equal the last export's `.sorted.csv`, whatever was killed along the way.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CLIENT, SECRET = "agent", "s3cret-value"
CONNECTOR = "AD"
TABLES = ("ADExport_entries", "ADExport_members")


def config_xml(max_deleted: int = 0) -> str:
    digest = base64.b64encode(hashlib.sha256(SECRET.encode()).digest()).decode()
    other = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    limit = f' MaximumDeletedLines="{max_deleted}"' if max_deleted else ""
    return f"""<ConfigurationFile xmlns="urn:e2e">
  <EntityTypeMapping Identifier="AD_Entry" Connector="AD" ConnectionTable="ADExport_entries"{limit}>
    <Property Identifier="objectGUID" ConnectionColumn="objectGUID" IsPrimaryKey="true" />
    <Property Identifier="dn" ConnectionColumn="dn" />
    <Property Identifier="mail" ConnectionColumn="mail" />
  </EntityTypeMapping>
  <EntityAssociationMapping Identifier="AD_Entry_member" Connector="AD"
      ConnectionTable="ADExport_members" Column1="dn" Column2="member" />
  <EntityTypeMapping Identifier="HR_Person" Connector="HR" ConnectionTable="HR_people">
    <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
  </EntityTypeMapping>
  <OpenIdClient Identifier="{CLIENT}" HashedSecret="{digest}" />
  <OpenIdClient Identifier="hr-only" HashedSecret="{other}" Connectors="HR" />
</ConfigurationFile>
"""


class Export:
    """A day-by-day AD export: entries keyed by objectGUID, and group members."""

    def __init__(self, seed: int, size: int = 300) -> None:
        self.rng = random.Random(seed)
        self.next_id = 0
        self.entries: dict[str, list[str]] = {}
        self.members: set[tuple[str, str]] = set()
        for _ in range(size):
            self.add()

    def add(self) -> None:
        self.next_id += 1
        guid = f"{self.next_id:08x}-0000-4000-8000-{self.rng.getrandbits(48):012x}"
        dn = f"CN=User {self.next_id}\\, Jean,OU=Users,DC=corp,DC=example"
        self.entries[guid] = [guid, dn, f"user{self.next_id}@corp.example"]
        if self.rng.random() < 0.5:
            self.members.add((f"CN=Group {self.next_id % 7},DC=corp", dn))

    def next_day(self, deletes: int = 5) -> None:
        for guid in self.rng.sample(sorted(self.entries), deletes):
            del self.entries[guid]
        for guid in self.rng.sample(sorted(self.entries), 8):
            self.entries[guid][2] = f"changed{self.rng.getrandbits(20)}@corp.example"
        for _ in range(6):
            self.add()
        for pair in self.rng.sample(sorted(self.members), min(3, len(self.members))):
            self.members.discard(pair)

    def write(self, sources: Path) -> None:
        def quote(v: str) -> str:
            return f'"{v}"' if "," in v else v

        rows = list(self.entries.values())
        self.rng.shuffle(rows)
        rows.append([*rows[0][:1], "CN=dup", "dup@x"])  # a duplicate key, set aside
        lines = ["objectGUID,dn,extra,mail"] + [
            f"{quote(g)},{quote(dn)},x,{mail}" for g, dn, mail in rows
        ]
        (sources / "ADExport_entries.csv").write_text("\r\n".join(lines) + "\r\n")
        members = ["dn,member"] + [f"{quote(a)},{quote(b)}" for a, b in sorted(self.members)]
        (sources / "ADExport_members.csv").write_text("\n".join(members) + "\n")


class Server:
    """`prepsync serve` in a child process on 127.0.0.1, restartable on the same port."""

    def __init__(self, root: Path, config: Path, session_timeout: float = 3600) -> None:
        self.root, self.config, self.session_timeout = root, config, session_timeout
        self.data = root / "server-data"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prepsync",
                "serve",
                "--config",
                str(self.config),
                "--data-dir",
                str(self.data),
                "--port",
                str(self.port),
                "--session-timeout",
                str(self.session_timeout),
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while True:
            assert self.process.poll() is None, (self.root / "server.log").read_text()
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)

    def api(self, client: str = CLIENT, secret: str = SECRET) -> httpx.Client:
        token = httpx.post(
            self.url + "/connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client,
                "client_secret": secret,
                "scope": "usercube_api",
            },
        ).json()["access_token"]
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"})

    def wait(self, session_id: str, states: tuple[str, ...] = ("done",)) -> str:
        with self.api() as api:
            deadline = time.monotonic() + 30
            while True:
                state = str(api.get(f"/api/sessions/{session_id}").json()["state"])
                if state in states or time.monotonic() > deadline:
                    return state
                time.sleep(0.05)

    def sessions(self) -> list[dict[str, str]]:
        with self.api() as api:
            result: list[dict[str, str]] = api.get(f"/api/connectors/{CONNECTOR}/sessions").json()
            return result

    def resources(self, table: str) -> bytes:
        with self.api() as api:
            response = api.get(f"/api/connectors/{CONNECTOR}/tables/{table}/resources")
            response.raise_for_status()
            return response.content


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Agent:
    def __init__(self, root: Path, server: Server) -> None:
        self.root, self.server = root, server
        self.sources = root / "Temp" / "ExportOutput"
        self.working = root / "Work" / "Collect"
        self.sources.mkdir(parents=True)

    def command(self, mode: str, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "prepsync",
            "prepare",
            "--connector",
            CONNECTOR,
            "--agent",
            "e2e",
            "--synchronization-mode",
            mode,
            "--api-url",
            self.server.url,
            "--api-client-id",
            CLIENT,
            "--temp-folder",
            str(self.root / "Temp"),
            "--work-folder",
            str(self.root / "Work"),
            "--log-level",
            "Warning",
            *extra,
        ]

    def run(
        self, mode: str, *extra: str, env: dict[str, str] | None = None, secret: str = SECRET
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(mode, *extra),
            capture_output=True,
            text=True,
            env={**os.environ, "PREPSYNC_API_SECRET": secret, **(env or {})},
        )

    def sorted_file(self, table: str) -> bytes:
        return (self.working / f"{table}.sorted.csv").read_bytes()

    def assert_store_matches_export(self) -> None:
        for table in TABLES:
            assert self.server.resources(table) == self.sorted_file(table), table


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Server, Agent, Export]]:
    config = tmp_path / "server.xml"
    config.write_text(config_xml())
    server = Server(tmp_path, config)
    server.start()
    try:
        yield server, Agent(tmp_path / "agent", server), Export(seed=11)
    finally:
        server.stop()


def latest_session(server: Server) -> str:
    return server.sessions()[0]["id"]


@pytest.mark.slow
def test_complete_then_incrementals_keep_store_equal_to_export(
    chain: tuple[Server, Agent, Export],
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
def test_server_killed_mid_upload_then_restarted(chain: tuple[Server, Agent, Export]) -> None:
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
@pytest.mark.parametrize("point", ["uploaded", "server-committed"])
def test_agent_killed_around_commit_sends_each_change_once(
    chain: tuple[Server, Agent, Export], point: str
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
    assert second != first
    if point == "uploaded":  # never committed: cancelled, and the rerun sends the changes
        assert states[first] == "cancelled"
        assert server.wait(second) == "done"
    else:  # committed: the rerun only advanced the baselines; its own delta is empty
        assert server.wait(first) == "done" and server.wait(second) == "done"
        delta = (agent.working / "ADExport_entries.sorted.delta.csv").read_bytes()
        assert delta.count(b"\n") == 1, "the committed changes were sent again"
    agent.assert_store_matches_export()


@pytest.fixture
def blocked(tmp_path: Path) -> Iterator[tuple[Server, Agent, Export, str, bytes]]:
    """A server with MaximumDeletedLines=3, a complete load done, then an incremental run
    deleting 5 entries: accepted by the agent, blocked by the server. Yields the chain, the
    blocked session and the entries the store held before it."""
    config = tmp_path / "server.xml"
    config.write_text(config_xml(max_deleted=3))
    server = Server(tmp_path, config)
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
    blocked: tuple[Server, Agent, Export, str, bytes],
) -> None:
    server, agent, _, session, before = blocked
    assert server.resources("ADExport_entries") == before
    with server.api() as api:
        assert api.post(f"/api/sessions/{session}/force").status_code == 202
    assert server.wait(session) == "done"
    agent.assert_store_matches_export()


@pytest.mark.slow
def test_complete_session_cancels_blocked_and_queued_incrementals(
    blocked: tuple[Server, Agent, Export, str, bytes],
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


def test_refused_credentials_fail_cleanly_without_leaking(
    chain: tuple[Server, Agent, Export],
) -> None:
    _server, agent, export = chain
    export.write(agent.sources)
    wrong = agent.run("complete", secret="not-the-secret")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("error: ") and wrong.stderr.count("\n") == 1
    assert "not-the-secret" not in wrong.stderr + wrong.stdout
    assert "401" in wrong.stderr
    assert not (agent.sources / "previous").exists()


def test_client_not_allowed_on_connector_gets_403(chain: tuple[Server, Agent, Export]) -> None:
    _server, agent, export = chain
    export.write(agent.sources)
    command = [a if a != CLIENT else "hr-only" for a in agent.command("complete")]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PREPSYNC_API_SECRET": "other"},
    )
    assert done.returncode == 1 and "403" in done.stderr
    assert not (agent.sources / "previous").exists()
