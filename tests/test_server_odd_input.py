"""Odd input to every endpoint is a 4xx with a JSON reason, never a 500 (in process: the
TestClient raises what the app does not handle, so a 500's exception fails the test).

Numbers in query parameters and headers are ASCII digits only (``str.isdigit()``, ``int()``
and ``float()`` also take superscript, circled, Arabic-Indic or full-width digits, "1_0" and
spaces), JSON bodies are bounded in nesting, and strings must be Unicode text.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serverutil import Api, csv_bytes, hash_secret
from starlette.requests import Request

from prepsync.server import create_app
from prepsync.server.http import ApiError, check_declared_length

SECRET = "odd-secret"
# The client is an administrator, so that the review endpoints (changes, force, cancel) parse
# their input rather than refuse the client.
CONFIG = f"""<ConfigurationFile xmlns="urn:odd">
  <OpenIdClient Identifier="odd" HashedSecret="{hash_secret(SECRET)}" Profile="Administrator" />
  <EntityTypeMapping Identifier="P" Connector="C" ConnectionTable="people"
      MaximumDeletedLines="1">
    <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
    <Property Identifier="name" ConnectionColumn="name" />
  </EntityTypeMapping>
</ConfigurationFile>
"""
FILE = "people.sorted.csv"
# Each of these is a number to str.isdigit(), int() or float(), and none is ASCII digits.
NOT_ASCII_NUMBERS = [
    "\u00b2",
    "\u2460",
    "\u0663",
    "\uff13",
    "1_0",
    " 3",
    "3 ",
    "+3",
    "0x3",
    "1e2",
    "",
    "-1",
    "\u0663.\u0665",
]


class Fixture:
    def __init__(self, api: Api) -> None:
        self.api = api
        # A blocked session (its files kept for review) and an open one with a file.
        self.api.send("C", "complete", {FILE: people(*[(str(i), "x") for i in range(5)])})
        self.blocked = self.api.send("C", "complete", {FILE: people(("1", "x"))})
        assert self.api.state(self.blocked)["state"] == "blocked"
        self.open = self.api.open("C", "incremental")
        self.api.upload(self.open, "people.sorted.delta.csv", b"command,id,name\n")


def people(*rows: tuple[str, str]) -> bytes:
    return csv_bytes(["id", "name"], rows)


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    root = tmp_path_factory.mktemp("odd")
    (root / "config.xml").write_text(CONFIG)
    app = create_app(root / "config.xml", root / "data")
    with TestClient(app) as client:
        yield Fixture(Api(client, "odd", SECRET))


def refused(response: Any, status: int = 400, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert isinstance(error, str) and error, response.text
    for word in words:
        assert word in error, error


@pytest.mark.parametrize("limit", NOT_ASCII_NUMBERS)
def test_limit_of_the_session_list_takes_ascii_digits_only(odd: Fixture, limit: str) -> None:
    refused(odd.api.get("/api/connectors/C/sessions", params={"limit": limit}), 400, "'limit'")


@pytest.mark.parametrize("limit", NOT_ASCII_NUMBERS)
def test_limit_of_the_changes_takes_ascii_digits_only(odd: Fixture, limit: str) -> None:
    answer = odd.api.get(f"/api/sessions/{odd.blocked}/changes", params={"limit": limit})
    refused(answer, 400, "'limit'")


def test_ascii_limits_still_work(odd: Fixture) -> None:
    listed = odd.api.get("/api/connectors/C/sessions", params={"limit": "2"})
    assert listed.status_code == 200 and len(listed.json()) == 2
    page = odd.api.get(f"/api/sessions/{odd.blocked}/changes", params={"limit": "003"})
    assert page.status_code == 200, page.text
    assert page.text.splitlines()[0] == "command,id,name" and len(page.text.splitlines()) == 4
    for limit in ("0", "1000001", "9" * 40):
        refused(odd.api.get("/api/connectors/C/sessions", params={"limit": limit}), 400)


@pytest.mark.parametrize("wait", [*NOT_ASCII_NUMBERS, "nan", "inf", "1e309", "9" * 40, ".5"])
def test_wait_takes_ascii_seconds_only(odd: Fixture, wait: str) -> None:
    refused(odd.api.get(f"/api/sessions/{odd.open}", params={"wait": wait}), 400, "'wait'")


def test_ascii_waits_still_work(odd: Fixture) -> None:
    for wait in ("0", "0.05", "1.", "0.000"):
        answer = odd.api.get(f"/api/sessions/{odd.blocked}", params={"wait": wait})
        assert answer.status_code == 200, (wait, answer.text)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deeply_nested_bodies_are_a_400(odd: Fixture, depth: int) -> None:
    body = b'{"agent": ' + nested(depth) + b', "mode": "complete"}'
    refused(odd.api.post("/api/connectors/C/sessions", content=body), 400, "nested")
    body = b'{"files": [{"name": ' + nested(depth) + b"}]}"
    refused(odd.api.post(f"/api/sessions/{odd.open}/commit", content=body), 400, "nested")
    refused(odd.api.post(f"/api/sessions/{odd.open}/commit", content=nested(depth)), 400)


def test_a_body_as_deep_as_allowed_is_judged_on_its_content(odd: Fixture) -> None:
    body = b'{"agent": "", "mode": "complete", "x": ' + nested(31) + b"}"
    refused(odd.api.post("/api/connectors/C/sessions", content=body), 400, "'agent'")


@pytest.mark.parametrize(
    "document",
    [
        {"agent": "\ud800", "mode": "incremental"},
        {"agent": "a", "mode": "incremental", "separator": "\udfff"},
        {"agent": "a", "mode": "incremental", "\ud83d": 1},
    ],
)
def test_a_lone_surrogate_in_a_body_is_a_400(odd: Fixture, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode("ascii")  # escaped: "\\ud800", valid JSON text
    refused(odd.api.post("/api/connectors/C/sessions", content=body), 400, "surrogate")
    files = {"files": [{"name": "\udc00.sorted.csv", "size": 0, "xxh3_128": "0" * 32}]}
    commit = json.dumps(files).encode("ascii")
    refused(odd.api.post(f"/api/sessions/{odd.open}/commit", content=commit), 400, "surrogate")


@pytest.mark.parametrize("length", ["\u00b2", "\u00b3\u00b9", "1_0", "0x1", "-1", "1e1", " "])
def test_content_length_takes_ascii_digits_only(length: str) -> None:
    """Header bytes are read as latin-1: superscripts are the non-ASCII digits a header can
    carry. (Checked on the request itself: an HTTP client, and uvicorn's parser in front of a
    real server, would not let such a header through.)"""
    request = Request({"type": "http", "headers": [(b"content-length", length.encode("latin-1"))]})
    with pytest.raises(ApiError) as refusal:
        check_declared_length(request, 1 << 20)
    assert refusal.value.status == 400 and "Content-Length" in refusal.value.message
    ascii_request = Request({"type": "http", "headers": [(b"content-length", b"12")]})
    check_declared_length(ascii_request, 12)


@pytest.mark.parametrize(
    "content_range",
    [
        "bytes \u0660-\u0660/\u0661",
        "bytes \uff10-\uff10/\uff11",
        "bytes 0-0/\u00b9",
        "bytes 1_0-1_0/2_0",
        "bytes -0-0/1",
        "bytes 0-0/1/2",
        "bytes 0-9999999999999999999/*",
        "bits 0-0/1",
        "bytes 1-0/2",
        "bytes 0-1/1",
    ],
)
def test_odd_content_ranges_are_a_400(odd: Fixture, content_range: str) -> None:
    path = f"/api/sessions/{odd.open}/files/people.sorted.delta.csv"
    headers = {**odd.api.auth, "Content-Range": content_range.encode("utf-8")}
    refused(odd.api.http.put(path, content=b"x", headers=headers), 400, "Content-Range")


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic \u00e9\u00e9\u00e9\u00e9",
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Basic",
    ],
)
def test_odd_basic_credentials_are_refused_not_a_500(odd: Fixture, authorization: str) -> None:
    form = {"grant_type": "client_credentials", "scope": "usercube_api"}
    answer = odd.api.http.post(
        "/connect/token", data=form, headers={"Authorization": authorization.encode("latin-1")}
    )
    refused(answer, 401)


@pytest.mark.parametrize(
    "authorization", ["Bearer \u00e9", "Bearer a.b", "Bearer " + "x" * 5000, "Bearer ..", "Bearer"]
)
def test_odd_bearer_tokens_are_a_401(odd: Fixture, authorization: str) -> None:
    headers = {"Authorization": authorization.encode("latin-1")}
    refused(odd.api.http.get("/api/connectors/C/sessions", headers=headers), 401)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("after", "\x00"),
        ("after", '"unterminated'),
        ("after", ""),
        ("command", "İnsert"),
        ("command", "\x00"),
        ("table", "\ufffd"),
        ("table", "peop\x00le"),
    ],
)
def test_odd_review_parameters_are_a_4xx(odd: Fixture, parameter: str, value: str) -> None:
    answer = odd.api.get(f"/api/sessions/{odd.blocked}/changes", params={parameter: value})
    if answer.status_code == 200:  # a NUL is a legal key value: it names no stored row
        assert parameter == "after", answer.text
        return
    refused(answer, answer.status_code)
    assert 400 <= answer.status_code < 500


@pytest.mark.parametrize(
    "session", ["\u0661" * 32, "{" + "0" * 32 + "}", "0" * 36, "%00", "%ff" * 20]
)
def test_odd_session_ids_are_a_404(odd: Fixture, session: str) -> None:
    for path in (f"/api/sessions/{session}", f"/api/sessions/{session}/changes"):
        refused(odd.api.get(path), 404)
    for action in ("cancel", "force", "commit"):
        refused(odd.api.post(f"/api/sessions/{session}/{action}", json={}), 404)


@pytest.mark.parametrize("version", ["abc", "1.x.y", "\u00b2", "1.0.0"])
def test_an_odd_openmetrics_version_is_a_400(odd: Fixture, version: str) -> None:
    accept = f"application/openmetrics-text; version={version}".encode("latin-1")
    answer = odd.api.http.get("/metrics", headers={"Accept": accept})
    if version == "1.0.0":
        assert answer.status_code == 200 and "openmetrics" in answer.headers["content-type"]
    else:
        refused(answer, 400, "Accept")
