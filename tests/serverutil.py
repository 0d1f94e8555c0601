"""Helpers for the server tests: a configuration, CSV bytes, an API driver, a server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import xxhash

from prepsync.server.clients import hash_secret

SECRET = "agent-secret"
HR_SECRET = "hr-secret"
FINAL = frozenset({"done", "failed", "cancelled", "blocked"})

CONFIG = """<?xml version="1.0" encoding="utf-8"?>
<ConfigurationFile xmlns="urn:prepsync:test">
  <OpenIdClient Identifier="agent" HashedSecret="{agent}" />
  <OpenIdClient Identifier="hr-only" HashedSecret="{hr}" Connectors="HR" />
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
    path.write_text(CONFIG.format(agent=hash_secret(SECRET), hr=hash_secret(HR_SECRET)))
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
    """Drives the server like an agent; works with a TestClient or an httpx.Client."""

    def __init__(self, http: httpx.Client, client_id: str = "agent", secret: str = SECRET):
        self.http = http
        self.client_id = client_id
        self.secret = secret
        self._token: str | None = None

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

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, headers=self.auth, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, headers=self.auth, **kwargs)

    def put(
        self, path: str, content: bytes, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.http.put(path, headers={**self.auth, **(headers or {})}, content=content)

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
        deadline = time.monotonic() + timeout
        while True:
            document = self.state(session_id)
            if document["state"] in states:
                return document
            assert time.monotonic() < deadline, f"session still {document['state']}"
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


_SERVE = """
import json, sys
from prepsync.server import serve
arguments = json.loads(sys.argv[1])
serve(**arguments)
"""


class ServerProcess:
    """The real server (uvicorn) in a child process on 127.0.0.1."""

    def __init__(self, config: Path, data: Path, log: Path, **options: Any) -> None:
        self.config = config
        self.data = data
        self.log = log
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        self.port = free_port()
        arguments = {
            "config_path": str(self.config),
            "data_dir": str(self.data),
            "host": "127.0.0.1",
            "port": self.port,
            "log_level": "warning",
            **self.options,
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _SERVE, json.dumps(arguments)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start: " + self.log.read_text()
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
