"""The one server harness: the real server in a child process, an API driver, the agent.

* API-level tests: :func:`write_config` (two connectors; clients ``agent`` (every connector),
  ``hr-only`` (HR) and ``operator`` (the operator profile)), :func:`csv_bytes`
  (independent of the server's formatter), :class:`Api` (drives a TestClient or an httpx
  client like an agent), :func:`running` (the server in process, in a TestClient),
  :class:`ServerProcess` (the real server on 127.0.0.1).
* End-to-end tests: :func:`config_xml`, :class:`Export` (a day-by-day AD export),
  :class:`Agent` (``prepsync prepare --api-url`` in a child process), the :func:`chain` fixture.
* The reliability harness (``chaos.py``) builds its server on :class:`ServerProcess` too.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import xxhash

with warnings.catch_warnings():
    # Starlette >= 1.x prefers the httpx2 fork for its TestClient; httpx works the same here.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from prepsync.client import TOKEN_PATH, ApiClient, RetryPolicy
from prepsync.server import create_app

CLIENT, SECRET = "agent", "agent-secret"
# A client of the server's operator profile (Administrator): reviews, forces and cancels.
OPERATOR, OPERATOR_SECRET = "operator", "operator-secret"
CONNECTOR = "AD"
HR_SECRET = "hr-secret"
FINAL = frozenset({"done", "failed", "cancelled", "blocked"})


def hash_secret(secret: str) -> str:
    """``HashedSecret``: base64(SHA-256(UTF-8 secret)), written here and not taken from the
    server, so a change to the server's hashing fails these tests instead of passing them."""
    return base64.b64encode(hashlib.sha256(secret.encode("utf-8")).digest()).decode("ascii")


CONFIG = """<?xml version="1.0" encoding="utf-8"?>
<ConfigurationFile xmlns="urn:prepsync:test">
  <OpenIdClient Identifier="agent" HashedSecret="{agent}" Profile="Agent" />
  <OpenIdClient Identifier="hr-only" HashedSecret="{hr}" Connectors="HR" />
  <OpenIdClient Identifier="operator" HashedSecret="{operator}" Profile="Administrator" />
  <EntityTypeMapping Identifier="AD_Entry" Connector="AD" ConnectionTable="ADExport_entries">
    <Property Identifier="objectGUID" ConnectionColumn="objectGUID" IsPrimaryKey="true" />
    <Property Identifier="dn" ConnectionColumn="dn" />
    <Property Identifier="manager" />
  </EntityTypeMapping>
  <EntityAssociationMapping Identifier="AD_Entry_member" Connector="AD"
      ConnectionTable="ADExport_members" Column1="dn" Column2="member" />
  <EntityTypeMapping Identifier="HR_Person" Connector="HR" ConnectionTable="HR_people"
      MaximumDeletedLines="1" MaxPercentageInsertedLines="50">
    <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
    <Property Identifier="name" ConnectionColumn="name" />
  </EntityTypeMapping>
</ConfigurationFile>
"""


def write_config(directory: Path) -> Path:
    path = directory / "config.xml"
    path.write_text(
        CONFIG.format(
            agent=hash_secret(SECRET),
            hr=hash_secret(HR_SECRET),
            operator=hash_secret(OPERATOR_SECRET),
        )
    )
    return path


def _quote(value: str) -> str:
    if any(character in value for character in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    """SPEC §2 output: LF, quoted only when needed (independent of the server's formatter)."""
    lines = [",".join(_quote(value) for value in row) + "\n" for row in [header, *rows]]
    return "".join(lines).encode("utf-8")


def xxh3(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class Api:
    """Drives the server like an agent; works with a TestClient or an httpx.Client.

    ``renew_token``: a 401 fetches a new token and sends the request once more (a helper that
    outlives tokens, as :class:`ServerProcess`'s does); off by default, so that a test sees
    exactly what its token gets.
    """

    def __init__(
        self,
        http: httpx.Client,
        client_id: str = "agent",
        secret: str = SECRET,
        *,
        renew_token: bool = False,
    ):
        self.http = http
        self.client_id = client_id
        self.secret = secret
        self.renew_token = renew_token
        self._token: str | None = None

    def operator(self) -> Api:
        """A driver of the operator's client on the same server."""
        return Api(self.http, OPERATOR, OPERATOR_SECRET)

    def token(self) -> str:
        if self._token is None:
            response = self.http.post(
                "/connect/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.secret,
                    "scope": "usercube_api",
                },
            )
            assert response.status_code == 200, response.text
            self._token = response.json()["access_token"]
        return self._token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        answer = self.http.request(method, path, headers={**self.auth, **(headers or {})}, **kwargs)
        if answer.status_code == 401 and self.renew_token:
            # The token expired (a long test, or the server's clock jumped): once more.
            self._token = None
            answer = self.http.request(
                method, path, headers={**self.auth, **(headers or {})}, **kwargs
            )
        return answer

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def put(
        self, path: str, content: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.request("PUT", path, headers=headers, content=content)

    def open(self, connector: str, mode: str, agent: str = "agent-1") -> str:
        response = self.post(
            f"/api/connectors/{connector}/sessions", json={"agent": agent, "mode": mode}
        )
        assert response.status_code == 201, response.text
        session_id: str = response.json()["id"]
        return session_id

    def put_chunk(
        self, session_id: str, name: str, data: bytes, start: int, total: int
    ) -> httpx.Response:
        end = start + len(data) - 1
        return self.put(
            f"/api/sessions/{session_id}/files/{name}",
            data,
            {"Content-Range": f"bytes {start}-{end}/{total}"},
        )

    def upload(self, session_id: str, name: str, data: bytes, chunk: int = 1 << 20) -> None:
        for start in range(0, max(len(data), 1), chunk):
            response = self.put_chunk(
                session_id, name, data[start : start + chunk], start, len(data)
            )
            assert response.status_code == 200, response.text

    def commit(self, session_id: str, files: dict[str, bytes]) -> httpx.Response:
        listing = [
            {"name": name, "size": len(data), "xxh3_128": xxh3(data)}
            for name, data in files.items()
        ]
        return self.post(f"/api/sessions/{session_id}/commit", json={"files": listing})

    def state(self, session_id: str) -> dict[str, Any]:
        response = self.get(f"/api/sessions/{session_id}")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def wait(
        self, session_id: str, states: frozenset[str] = FINAL, timeout: float = 15
    ) -> dict[str, Any]:
        """The session once its state is one of ``states``; an AssertionError naming the state
        it is still in after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            document = self.state(session_id)
            if document["state"] in states:
                return document
            assert time.monotonic() < deadline, (
                f"session {session_id} still {document['state']} after {timeout} s"
            )
            time.sleep(0.02)

    def send(self, connector: str, mode: str, files: dict[str, bytes], wait: bool = True) -> str:
        """Open, upload, commit; wait for a final state unless told not to."""
        session_id = self.open(connector, mode)
        for name, data in files.items():
            self.upload(session_id, name, data)
        response = self.commit(session_id, files)
        assert response.status_code == 202, response.text
        if wait:
            self.wait(session_id)
        return session_id

    def resources(self, connector: str, table: str) -> bytes:
        response = self.get(f"/api/connectors/{connector}/tables/{table}/resources")
        assert response.status_code == 200, response.text
        return response.content


@contextlib.contextmanager
def running(tmp_path: Path, database: str | None = None, **options: Any) -> Iterator[Api]:
    """The server on ``database`` (None: SQLite in the data directory) in a TestClient, on
    :func:`write_config`'s configuration unless ``tmp_path`` already has a config.xml."""
    config = tmp_path / "config.xml"
    if not config.exists():
        write_config(tmp_path)
    app = create_app(config, tmp_path / "data", database=database, **options)
    with TestClient(app) as client:
        yield Api(client)


def prepare_argv(
    connector: str,
    mode: str = "complete",
    *extra: str,
    agent: str = "test",
    config: Path | None = None,
    temp_folder: Path | None = None,
    work_folder: Path | None = None,
    sources: Path | None = None,
    working: Path | None = None,
    api_url: str | None = None,
    client_id: str | None = None,
    secret: str | None = None,
) -> list[str]:
    """``prepsync prepare``'s arguments, from ``prepare`` on: for CliRunner as they are, for a
    child process after :func:`python_m_prepsync`. Only the options given, then ``extra``."""
    options: list[tuple[str, object]] = [
        ("--config", config),
        ("--api-url", api_url),
        ("--api-client-id", client_id),
        ("--api-secret", secret),
        ("--temp-folder", temp_folder),
        ("--work-folder", work_folder),
        ("--sources-directory", sources),
        ("--working-directory", working),
    ]
    argv = ["prepare", "--connector", connector, "--agent", agent]
    argv += ["--synchronization-mode", mode]
    for name, value in options:
        if value is not None:
            argv += [name, str(value)]
    return [*argv, *extra]


def python_m_prepsync(*argv: str) -> list[str]:
    """The command line of ``prepsync ARGV`` in a child process, on this interpreter."""
    return [sys.executable, "-m", "prepsync", *argv]


Handler = Callable[[httpx.Request], httpx.Response]
# What a mock server answers POST /connect/token with: a bearer token good for an hour.
TOKEN_ANSWER = {"access_token": "t", "token_type": "Bearer", "expires_in": 3600}


def answering_tokens(handle: Handler, calls: list[str] | None = None) -> Handler:
    """``handle`` behind a token endpoint: POST /connect/token is answered here, every other
    request by ``handle``; ``calls`` records ``"METHOD path"`` of each, tokens included."""

    def transport(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith(TOKEN_PATH):
            return httpx.Response(200, json=TOKEN_ANSWER)
        return handle(request)

    return transport


def mock_api(handle: Handler, *, calls: list[str] | None = None, **options: Any) -> ApiClient:
    """The agent's client against a MockTransport ``handle`` behind :func:`answering_tokens`;
    by default no retries and no real pauses (``options`` go to ApiClient)."""
    options.setdefault("retry", RetryPolicy(total_seconds=0))
    options.setdefault("sleep", lambda _: None)
    transport = httpx.MockTransport(answering_tokens(handle, calls))
    return ApiClient("http://127.0.0.1:9", "id", "secret", transport=transport, **options)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# Options of prepsync.server.serve() that `prepsync serve` does not offer: given any, the server
# is started through serve() itself instead of the command line.
_SERVE_ONLY_OPTIONS = frozenset({"max_body", "max_file_size", "token_ttl"})

_SERVE = """
import json, sys
from prepsync.server import serve, worker
arguments = json.loads(sys.argv[1])
if "store_retry_delay" in arguments:  # the worker's pause after a store error (disk full)
    worker.STORE_RETRY_DELAY = arguments.pop("store_retry_delay")
if arguments.pop("cli"):
    from prepsync.cli import main
    main(arguments["argv"])
else:
    serve(**arguments["serve"])
"""


class ServerProcess:
    """The real server in a child process on 127.0.0.1, restartable on the same port.

    Started as a user starts it, ``prepsync serve`` with its options, unless a ``serve()``
    option the command line does not offer is given (``max_body``, ``max_file_size``,
    ``token_ttl``). ``store_retry_delay`` shortens the worker's pause after a store error.
    ``database``: the ``--database`` URL (PostgreSQL); None for SQLite in the data directory.
    The API helpers act as the ``agent`` client (or the one named), like an operator would.
    """

    def __init__(
        self,
        config: Path,
        data: Path,
        log: Path,
        *,
        session_timeout: float = 3600,
        store_retry_delay: float | None = None,
        database: str | None = None,
        **serve_options: Any,
    ) -> None:
        unknown = set(serve_options) - _SERVE_ONLY_OPTIONS
        assert not unknown, f"unknown server options: {sorted(unknown)}"
        self.config = config
        self.data = data
        self.log = log
        self.session_timeout = session_timeout
        self.database = database  # --database: None for SQLite in the data directory
        self.store_retry_delay = store_retry_delay
        self.serve_options = serve_options
        self.process: subprocess.Popen[bytes] | None = None
        self._operator: Api | None = None
        # Chosen once: a restarted server answers on the URL the agents already use.
        self.port = free_port()

    @classmethod
    def in_folder(cls, root: Path, config: Path, **options: Any) -> ServerProcess:
        """Data in ``<root>/server-data``, log in ``<root>/server.log``."""
        return cls(config, root / "server-data", root / "server.log", **options)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _launch_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"cli": not self.serve_options}
        if self.store_retry_delay is not None:
            arguments["store_retry_delay"] = self.store_retry_delay
        if self.serve_options:
            arguments["serve"] = {
                "config_path": str(self.config),
                "data_dir": str(self.data),
                "host": "127.0.0.1",
                "port": self.port,
                "session_timeout": self.session_timeout,
                "log_level": "warning",
                "database": self.database,
                **self.serve_options,
            }
        else:
            arguments["argv"] = [
                "serve",
                "--config",
                str(self.config),
                "--data-dir",
                str(self.data),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--session-timeout",
                str(self.session_timeout),
                "--log-level",
                "warning",
            ]
            if self.database is not None:
                arguments["argv"] += ["--database", self.database]
        return arguments

    def command(self) -> list[str]:
        if not self.serve_options and self.store_retry_delay is None:
            return [sys.executable, "-m", "prepsync", *self._launch_arguments()["argv"]]
        return [sys.executable, "-c", _SERVE, json.dumps(self._launch_arguments())]

    def start(self, timeout: float = 30) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # a Ctrl-C meant for pytest does not reach it
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError("server exited: " + self.log.read_text(errors="replace"))
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not start: " + self.log.read_text())
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or a power cut."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._operator is not None:
            self._operator.http.close()
            self._operator = None

    # ---------------------------------------------------------------- the API, as an operator
    def api(self, client: str = OPERATOR, secret: str = OPERATOR_SECRET) -> httpx.Client:
        """A new HTTP client carrying a bearer token of ``client`` (close it, or use ``with``)."""
        with httpx.Client(base_url=self.url, timeout=30) as http:
            token = Api(http, client, secret).token()
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"})

    def operator(self) -> Api:
        """The operator's :class:`Api` on this server, kept for the helpers below (polling
        would otherwise ask a token per request); it renews its token after a 401."""
        if self._operator is None:
            http = httpx.Client(base_url=self.url, timeout=30)
            self._operator = Api(http, OPERATOR, OPERATOR_SECRET, renew_token=True)
        return self._operator

    def get(self, path: str) -> httpx.Response:
        return self.operator().get(path)

    def post(self, path: str, json: Any = None) -> httpx.Response:
        return self.operator().post(path, json=json)

    def wait(
        self, session_id: str, states: tuple[str, ...] = ("done",), timeout: float = 30
    ) -> str:
        """The session's state once it is one of ``states`` (an AssertionError after
        ``timeout`` seconds, naming the state it is still in)."""
        return str(self.operator().wait(session_id, frozenset(states), timeout)["state"])

    def sessions(self, connector: str = CONNECTOR) -> list[dict[str, Any]]:
        """The connector's sessions, newest first."""
        answer = self.get(f"/api/connectors/{connector}/sessions")
        answer.raise_for_status()
        listing: list[dict[str, Any]] = answer.json()
        return listing

    def resources(self, table: str, connector: str = CONNECTOR) -> bytes:
        answer = self.get(f"/api/connectors/{connector}/tables/{table}/resources")
        answer.raise_for_status()
        return answer.content


def sqlite_only(fixture: str = "store_url") -> pytest.MarkDecorator:
    """Runs a test on the SQLite store only, in a module whose server runs on both stores
    (``fixture``: ``store_url`` or ``module_store_url``): for what the server's store plays no
    part in (the agent's own crash points, a refused login), so the suite does not pay twice
    for it."""
    scope = "module" if fixture == "module_store_url" else "function"
    return pytest.mark.parametrize(fixture, ["sqlite"], indirect=True, scope=scope)


# ------------------------------------------------------------------------------ end to end
TABLES = ("ADExport_entries", "ADExport_members")


def config_xml(max_deleted: int = 0) -> str:
    """The end-to-end configuration: AD's entries and members, HR's people, two agents' clients
    and an operator's."""
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
  <OpenIdClient Identifier="{CLIENT}" HashedSecret="{hash_secret(SECRET)}" Profile="Agent" />
  <OpenIdClient Identifier="hr-only" HashedSecret="{hash_secret(HR_SECRET)}" Connectors="HR" />
  <OpenIdClient Identifier="{OPERATOR}" HashedSecret="{hash_secret(OPERATOR_SECRET)}"
      Profile="Administrator" />
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


class Agent:
    def __init__(self, root: Path, server: ServerProcess, name: str = "e2e") -> None:
        self.root, self.server, self.name = root, server, name
        self.sources = root / "Temp" / "ExportOutput"
        self.working = root / "Work" / "Collect"
        self.sources.mkdir(parents=True)

    def command(self, mode: str, *extra: str) -> list[str]:
        return python_m_prepsync(
            *prepare_argv(
                CONNECTOR,
                mode,
                "--log-level",
                "Warning",
                *extra,
                agent=self.name,
                api_url=self.server.url,
                client_id=CLIENT,
                temp_folder=self.root / "Temp",
                work_folder=self.root / "Work",
            )
        )

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
def chain(tmp_path: Path, store_url: str | None) -> Iterator[tuple[ServerProcess, Agent, Export]]:
    """A server on each store (see conftest's ``store_url``), an agent and its export."""
    config = tmp_path / "server.xml"
    config.write_text(config_xml())
    server = ServerProcess.in_folder(tmp_path, config, database=store_url)
    server.start()
    try:
        yield server, Agent(tmp_path / "agent", server), Export(seed=11)
    finally:
        server.stop()


def latest_session(server: ServerProcess) -> str:
    return str(server.sessions()[0]["id"])
