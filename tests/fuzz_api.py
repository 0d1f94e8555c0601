"""Fuzz target for the server's request parsing: bodies, query parameters, path parameters and
headers of every endpoint, sent to a real ``prepsync serve`` on 127.0.0.1.

Each request starts from a valid one (the token form, a session opening, a chunk, a commit, a
status, a review page...) and is spoiled: JSON values replaced by odd ones (deep nesting, huge
or non-ASCII numbers, lone surrogates, NUL, very long strings), bodies mutated byte by byte,
query parameters and headers given digits that are not ASCII, path parameters that are not
what they name. The promises checked:

- every answer is a 2xx or a 4xx, never a 5xx (there is room on disk: no 507 either);
- every 4xx carries a JSON object with an ``error`` string (the reason);
- the server's log holds no traceback.

    python -m tests.fuzz_api --seconds 600 [--seed S]

Fixtures (a blocked session, an open one with part of a file) are made again whenever the
fuzzing cancelled, forced or superseded them, so the deep paths stay reachable.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__:  # run as `python -m tests.fuzz_api`: the helpers are siblings, not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from fuzz import mutate
from serverutil import ServerProcess, csv_bytes, hash_secret, xxh3

SECRET = "fuzz-secret"
CONNECTOR, TABLE = "C", "people"
# An administrator, so that review endpoints parse their input instead of refusing the client.
CONFIG = f"""<ConfigurationFile xmlns="urn:fuzz-api">
  <OpenIdClient Identifier="fuzz" HashedSecret="{hash_secret(SECRET)}" Profile="Administrator" />
  <EntityTypeMapping Identifier="P" Connector="{CONNECTOR}" ConnectionTable="{TABLE}"
      MaximumDeletedLines="1">
    <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
    <Property Identifier="name" ConnectionColumn="name" />
  </EntityTypeMapping>
</ConfigurationFile>
"""
FULL_FILE, DELTA_FILE = f"{TABLE}.sorted.csv", f"{TABLE}.sorted.delta.csv"
AGENT = "fuzz-agent"
FORM = "application/x-www-form-urlencoded"

# Numbers to str.isdigit(), int() or float() that are not ASCII digits, and other odd text.
ODD_NUMBERS = [
    "\u00b2", "\u2460", "\u0663", "\uff13", "\u0663.\u0665", "1_0", " 3", "3 ", "+3", "0x3",
    "1e2", "", "-1", "nan", "inf", "-0", "1e309", "9" * 40, ".5", "0", "1", "3", "0.01",
    "1000000", "1000001", "10000", "10001",
]  # fmt: skip
ODD_TEXT = [
    "", "\x00", "\ufffd", "\u0130nsert", "INSERT", "delete", "update", "insert", "../x", "a,b",
    '"', '"unterminated', "x" * 5000, "\u202e", "people", "PEOPLE", "peop\x00le", "%00",
    "\ud800", "\U0001f600", "\r\n", "1,2,3",
]  # fmt: skip
ODD_JSON_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**64, -(2**63), "", "x" * 70_000, "\ud800", "\udfff",
    "\x00", "\u00b2", "complete", "incremental", "initial", "COMPLETE", ";", ",", "\t", '"',
    "\r", "../etc/passwd", FULL_FILE, DELTA_FILE, "0" * 32, "f" * 32, "g" * 32, [], {}, [[]],
    {"files": []},
]  # fmt: skip
ODD_RANGES = [
    "bytes 0-0/1", "bytes 0-9/*", "bytes 0-0/\u00b9", "bytes \u0660-\u0660/\u0661", "bytes 1-0/2",
    "bytes 0-1/1", "bytes -1-0/1", "bytes 0-0/1/2", "bits 0-0/1", "bytes 0-99999999999999999999/*",
    "bytes */1", "bytes 5-9/10", "bytes 0-0/0", "", " ", "bytes=0-0", "bytes 0-0/-1",
]  # fmt: skip
JSON_TOKENS = [b"{", b"}", b"[", b"]", b'"', b"\\", b"\\u", b"\\ud800", b":", b",", b"null",
               b"1e999", b"-", b"\x00", b"\xff", b"NaN", b"Infinity", b"[" * 2000]  # fmt: skip


_DEEP = re.compile(rb'"\\u0001DEEP([0-9]+)\\u0001"')


class Violation(AssertionError):
    pass


@dataclass
class Fixtures:
    """Sessions in the states whose endpoints parse the most."""

    blocked: str = ""
    open: str = ""
    done: str = ""
    ids: list[str] = field(default_factory=list)


@dataclass
class Tally:
    requests: int = 0
    unsendable: int = 0  # requests httpx itself refused to build (not the server's business)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0

    def text(self) -> str:
        by_class = Counter(f"{status // 100}xx" for status in self.statuses.elements())
        common = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return (
            f"{self.requests} requests fuzzed ({dict(sorted(by_class.items()))}); "
            f"5xx answers: {self.server_errors}; statuses {common}; "
            f"{self.unsendable} not sendable by the client"
        )


def check_answer(request: str, answer: httpx.Response) -> None:
    """The promises for one answer (see the module doc); raises Violation."""
    status = answer.status_code
    if status >= 500 or not 200 <= status < 500 or 300 <= status < 400:
        raise Violation(f"{request}: {status} {answer.text[:300]!r}")
    if status >= 400:
        try:
            document = answer.json()
        except ValueError:
            raise Violation(
                f"{request}: {status} answer is not JSON: {answer.text[:200]!r}"
            ) from None
        if not isinstance(document, dict) or not isinstance(document.get("error"), str):
            raise Violation(f"{request}: {status} answer has no error string: {document!r}")


def check_log(log: Path) -> None:
    text = log.read_text(errors="replace") if log.exists() else ""
    for sign in ("Traceback", "Exception in ASGI application"):
        if sign in text:
            at = text.index(sign)
            raise Violation(f"the server logged a traceback: {text[max(0, at - 200) : at + 1500]}")


class ApiFuzzer:
    def __init__(self, server: ServerProcess, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.token = self._token()
        self.fixtures = Fixtures()
        self.tally = Tally()

    def close(self) -> None:
        self.http.close()

    # --- fixtures --------------------------------------------------------------------------

    def _token(self) -> str:
        answer = self.http.post(
            "/connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "fuzz",
                "client_secret": SECRET,
                "scope": "usercube_api",
            },
        )
        answer.raise_for_status()
        token: str = answer.json()["access_token"]
        return token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _send_session(self, mode: str, name: str, data: bytes, commit: bool = True) -> str:
        opened = self.http.post(
            f"/api/connectors/{CONNECTOR}/sessions",
            json={"agent": AGENT, "mode": mode},
            headers=self.auth,
        )
        assert opened.status_code == 201, opened.text
        session_id: str = opened.json()["id"]
        if data:
            put = self.http.put(
                f"/api/sessions/{session_id}/files/{name}",
                content=data,
                headers={**self.auth, "Content-Range": f"bytes 0-{len(data) - 1}/*"},
            )
            assert put.status_code == 200, put.text
        if commit:
            listing = [{"name": name, "size": len(data), "xxh3_128": xxh3(data)}]
            committed = self.http.post(
                f"/api/sessions/{session_id}/commit", json={"files": listing}, headers=self.auth
            )
            assert committed.status_code == 202, committed.text
            self._settle(session_id)
        return session_id

    def _settle(self, session_id: str) -> str:
        deadline = time.monotonic() + 30
        while True:
            state: str = self.http.get(f"/api/sessions/{session_id}", headers=self.auth).json()[
                "state"
            ]
            if state not in ("queued", "processing") or time.monotonic() > deadline:
                return state
            time.sleep(0.02)

    def refresh(self) -> None:
        """Make the blocked, open and done sessions again if the fuzzing settled them."""
        states = {
            session["id"]: session["state"]
            for session in self.http.get(
                f"/api/connectors/{CONNECTOR}/sessions", params={"limit": "50"}, headers=self.auth
            ).json()
        }
        fixtures = self.fixtures
        if states.get(fixtures.blocked) == "blocked" and states.get(fixtures.open) == "open":
            return
        rows = [(str(i), f"name {i}") for i in range(6)]
        fixtures.done = self._send_session("complete", FULL_FILE, csv_bytes(["id", "name"], rows))
        fixtures.blocked = self._send_session(
            "complete", FULL_FILE, csv_bytes(["id", "name"], rows[:1])
        )
        partial = b"command,id,name\ninsert,9,x\n"
        fixtures.open = self._send_session("incremental", DELTA_FILE, partial, commit=False)
        fixtures.ids = [fixtures.blocked, fixtures.open, fixtures.done]

    # --- odd parts -------------------------------------------------------------------------

    def session_id(self) -> str:
        roll = self.rng.random()
        if roll < 0.7 and self.fixtures.ids:
            return self.rng.choice(self.fixtures.ids)
        if roll < 0.8:
            return str(uuid.uuid4())
        if roll < 0.9 and self.fixtures.ids:
            return self.rng.choice(self.fixtures.ids).upper()
        return self.rng.choice(["x", "%2e%2e", "\u0661" * 32, "{" + "0" * 32 + "}", "0" * 36])

    def text(self, usual: str) -> str:
        return usual if self.rng.random() < 0.5 else self.rng.choice(ODD_TEXT)

    def number(self, usual: str) -> str:
        return usual if self.rng.random() < 0.3 else self.rng.choice(ODD_NUMBERS)

    def headers(self) -> dict[str, Any]:
        roll = self.rng.random()
        if roll < 0.85:
            return dict(self.auth)
        return {
            "Authorization": self.rng.choice(
                [
                    b"Bearer \xe9",
                    b"Bearer " + self.token.encode()[:-2],
                    b"Basic \xff\xfe",
                    b"Bearer",
                    b"bearer " + self.token.encode(),
                    b"Bearer x.y.z",
                ]
            )
        }

    def odd_json(self, document: Any) -> bytes:
        """``document`` with one to three values replaced, keys dropped or added, serialised;
        now and then mutated as bytes too."""
        document = json.loads(json.dumps(document))
        for _ in range(self.rng.randint(1, 3)):
            document = self._replace_somewhere(document)
        text = json.dumps(document, allow_nan=True).encode("utf-8", "surrogatepass")
        if b"\xed" in text:  # a lone surrogate: send it escaped, as valid JSON text
            text = json.dumps(document, allow_nan=True, ensure_ascii=True).encode("ascii")
        text = _DEEP.sub(lambda match: b"[" * int(match[1]) + b"]" * int(match[1]), text)
        if self.rng.random() < 0.25:
            text = mutate(text, self.rng, JSON_TOKENS, [text])
        return text

    def _odd_value(self) -> Any:
        if self.rng.random() < 0.15:  # nesting: a marker, replaced once serialised
            return f"\x01DEEP{self.rng.choice([20, 33, 1000, 50_000])}\x01"
        return self.rng.choice(ODD_JSON_VALUES)

    def _replace_somewhere(self, document: Any) -> Any:
        if not isinstance(document, (dict, list)) or not document or self.rng.random() < 0.2:
            return self._odd_value()
        if isinstance(document, dict):
            key = self.rng.choice(sorted(document))
            roll = self.rng.random()
            if roll < 0.15:
                del document[key]
            elif roll < 0.25:
                document[self.rng.choice(["x", "\ud800", "", key.upper()])] = self._odd_value()
            else:
                document[key] = self._replace_somewhere(document[key])
            return document
        index = self.rng.randrange(len(document))
        document[index] = self._replace_somewhere(document[index])
        return document

    # --- requests --------------------------------------------------------------------------

    def one(self) -> None:
        kind = self.rng.choice(
            [
                "form", "mappings", "open", "list", "status", "upload", "file_status",
                "commit", "changes", "cancel", "force", "resources", "page",
            ]
        )  # fmt: skip
        build: Callable[[], tuple[str, str, dict[str, Any]]] = getattr(self, f"_{kind}")
        method, path, options = build()
        self.send(method, path, options)

    def send(self, method: str, path: str, options: dict[str, Any]) -> None:
        described = f"{method} {path} {_short(options)}"
        try:
            answer = self.http.request(method, path, **options)
        except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
            self.tally.unsendable += 1
            return
        self.tally.requests += 1
        self.tally.statuses[answer.status_code] += 1
        if answer.status_code >= 500:
            self.tally.server_errors += 1
        check_answer(described, answer)

    def _form(self) -> tuple[str, str, dict[str, Any]]:
        """POST /connect/token with an odd form."""
        form = {
            "grant_type": self.text("client_credentials"),
            "client_id": self.text("fuzz"),
            "client_secret": self.text(SECRET),
            "scope": self.text("usercube_api"),
        }
        body = "&".join(f"{k}={v}" for k, v in form.items()).encode("utf-8", "surrogatepass")
        if self.rng.random() < 0.3:
            body = mutate(body, self.rng, [b"&", b"=", b"%", b"%ff", b"%00", b"+"], [body])
        content_type = self.rng.choice(
            [
                "application/x-www-form-urlencoded",
                "application/x-www-form-urlencoded; x",
                "text/plain",
            ]
        )
        return (
            "POST",
            "/connect/token",
            {"content": body, "headers": {"Content-Type": content_type}},
        )

    def _mappings(self) -> tuple[str, str, dict[str, Any]]:
        return (
            "GET",
            f"/api/connectors/{self.text(CONNECTOR)}/mappings",
            {"headers": self.headers()},
        )

    def _open(self) -> tuple[str, str, dict[str, Any]]:
        document = {"agent": AGENT, "mode": "incremental", "separator": ","}
        body = self.odd_json(document)
        return (
            "POST",
            f"/api/connectors/{CONNECTOR}/sessions",
            {"content": body, "headers": self.headers()},
        )

    def _list(self) -> tuple[str, str, dict[str, Any]]:
        params = [("limit", self.number("10"))]
        if self.rng.random() < 0.2:
            params.append(("limit", self.number("5")))
        return (
            "GET",
            f"/api/connectors/{self.text(CONNECTOR)}/sessions",
            {"params": params, "headers": self.headers()},
        )

    def _status(self) -> tuple[str, str, dict[str, Any]]:
        wait = self.rng.choice(["0", "0.01", *ODD_NUMBERS[:17]])
        params = {"wait": wait} if self.rng.random() < 0.8 else {}
        return (
            "GET",
            f"/api/sessions/{self.session_id()}",
            {"params": params, "headers": self.headers()},
        )

    def _file_name(self) -> str:
        return self.rng.choice([DELTA_FILE, FULL_FILE, DELTA_FILE.upper(), *ODD_TEXT])

    def _upload(self) -> tuple[str, str, dict[str, Any]]:
        data = mutate(b"command,id,name\ninsert,9,x\n", self.rng, [b",", b"\n", b'"'], [b"x"])
        headers = self.headers()
        if self.rng.random() < 0.85:
            content_range = self.rng.choice(
                [f"bytes 0-{len(data) - 1}/*", f"bytes 0-{len(data) - 1}/{len(data)}", *ODD_RANGES]
            )
            headers["Content-Range"] = content_range.encode("utf-8")
        path = f"/api/sessions/{self.session_id()}/files/{self._file_name()}"
        return "PUT", path, {"content": data, "headers": headers}

    def _file_status(self) -> tuple[str, str, dict[str, Any]]:
        path = f"/api/sessions/{self.session_id()}/files/{self._file_name()}"
        return "GET", path, {"headers": self.headers()}

    def _commit(self) -> tuple[str, str, dict[str, Any]]:
        data = b"command,id,name\ninsert,9,x\n"
        document = {"files": [{"name": DELTA_FILE, "size": len(data), "xxh3_128": xxh3(data)}]}
        # Only the open fixture can be committed: committing it for real would end it.
        session_id = self.session_id()
        return (
            "POST",
            f"/api/sessions/{session_id}/commit",
            {"content": self.odd_json(document), "headers": self.headers()},
        )

    def _changes(self) -> tuple[str, str, dict[str, Any]]:
        params: list[tuple[str, str]] = []
        if self.rng.random() < 0.5:
            params.append(("limit", self.number("2")))
        if self.rng.random() < 0.5:
            params.append(("command", self.text("delete")))
        if self.rng.random() < 0.5:
            params.append(("table", self.text(TABLE)))
        if self.rng.random() < 0.5:
            params.append(("after", self.text("3")))
        return (
            "GET",
            f"/api/sessions/{self.session_id()}/changes",
            {"params": params, "headers": self.headers()},
        )

    def _cancel(self) -> tuple[str, str, dict[str, Any]]:
        # The fixtures are cancelled now and then too: refresh() makes them again.
        session_id = self.session_id() if self.rng.random() < 0.1 else str(uuid.uuid4())
        body = self.odd_json({"reason": "x"}) if self.rng.random() < 0.5 else b""
        path = f"/api/sessions/{session_id}/cancel"
        return "POST", path, {"content": body, "headers": self.headers()}

    def _force(self) -> tuple[str, str, dict[str, Any]]:
        session_id = self.session_id() if self.rng.random() < 0.1 else str(uuid.uuid4())
        return "POST", f"/api/sessions/{session_id}/force", {"headers": self.headers()}

    def _resources(self) -> tuple[str, str, dict[str, Any]]:
        path = f"/api/connectors/{self.text(CONNECTOR)}/tables/{self.text(TABLE)}/resources"
        return "GET", path, {"headers": self.headers()}

    def _page(self) -> tuple[str, str, dict[str, Any]]:
        path = self.rng.choice(["/", "/healthz", "/metrics", "/nowhere", "/api", "/api/sessions"])
        version = self.rng.choice(["1.0.0", "abc", "\u00b2", "", "1.x", "9" * 30])
        accept = self.rng.choice(
            ["*/*", "text/plain", f"application/openmetrics-text; version={version}", ";;,"]
        )
        headers = {"Accept": accept.encode("latin-1")}
        if self.rng.random() < 0.5:  # the status page shows more to an operator's token
            headers.update(self.headers())
        return "GET", path, {"params": {"x": self.text("1")}, "headers": headers}


def _short(options: dict[str, Any]) -> str:
    shown = {key: value for key, value in options.items() if key != "headers"}
    headers = options.get("headers", {})
    if "Content-Range" in headers:
        shown["Content-Range"] = headers["Content-Range"]
    text = repr(shown)
    return text if len(text) < 300 else text[:300] + "..."


def run(
    seed: int,
    *,
    requests: int | None = None,
    seconds: float | None = None,
    root: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Tally:
    """Fuzz a fresh server for ``requests`` requests or ``seconds``; raises Violation."""
    scratch = Path(tempfile.mkdtemp(prefix="prepsync-fuzz-api-", dir=root))
    (scratch / "config.xml").write_text(CONFIG)
    server = ServerProcess.in_folder(scratch, scratch / "config.xml")
    server.start()
    fuzzer: ApiFuzzer | None = None
    try:
        fuzzer = ApiFuzzer(server, random.Random(seed))
        fuzzer.refresh()
        deadline = None if seconds is None else time.monotonic() + seconds
        number = 0
        while (requests is None or number < requests) and (
            deadline is None or time.monotonic() < deadline
        ):
            if number % 100 == 99:
                fuzzer.refresh()
                check_log(server.log)
                if log is not None:
                    log(fuzzer.tally.text())
            fuzzer.one()
            number += 1
        check_log(server.log)
        return fuzzer.tally
    finally:
        if fuzzer is not None:
            fuzzer.close()
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz_api", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="mutator seed")
    options = parser.parse_args(argv)
    print(f"API fuzzing, seed {options.seed}, {options.seconds:g} s", flush=True)
    try:
        tally = run(options.seed, seconds=options.seconds)
    except Violation as violation:
        print(f"FAILED: {violation}", flush=True)
        return 1
    print(tally.text(), flush=True)
    print("no 5xx, every 4xx with a JSON error, no traceback in the server log", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
