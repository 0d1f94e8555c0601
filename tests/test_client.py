"""prepsync.client.ApiClient: against the real server (uvicorn child process on 127.0.0.1) and,
for precise fault injection, against httpx.MockTransport handlers or a wrapper around the real
transport that drops, repeats or cuts requests."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import serverutil
from serverutil import (
    OPERATOR,
    OPERATOR_SECRET,
    SECRET,
    Api,
    ServerProcess,
    csv_bytes,
    write_config,
    xxh3,
)

from prepsync.client import ApiClient, FileReceipt, RetryPolicy
from prepsync.errors import ServerError

ENTRIES = "ADExport_entries"
MEMBERS = "ADExport_members"
SESSION = "0f8fad5b-d9cb-469f-a165-70867728950e"
Forward = Callable[[httpx.Request], httpx.Response]


# ---------------------------------------------------------------------------------- helpers


class Sleeps(list[float]):
    """An injected sleep that only records (and may run a hook, e.g. restart a server)."""

    def __init__(self, hook: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.hook = hook

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        if self.hook is not None:
            self.hook()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Mock:
    """A scriptable server for MockTransport: tokens t1, t2, ...; /api answers from a script."""

    def __init__(self, expires_in: int = 3600) -> None:
        self.expires_in = expires_in
        self.requests: list[httpx.Request] = []
        self.tokens = 0
        self.script: list[httpx.Response | Exception] = []
        self.default = httpx.Response(200, json={"id": SESSION, "state": "open"})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/connect/token"):
            self.tokens += 1
            return httpx.Response(
                200,
                json={
                    "access_token": f"t{self.tokens}",
                    "token_type": "Bearer",
                    "expires_in": self.expires_in,
                },
            )
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return self.default

    @property
    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if "/api/" in r.url.path]


def mock_client(
    mock: Mock | Callable[[httpx.Request], httpx.Response],
    base_url: str = "http://127.0.0.1:9",
    **options: Any,
) -> ApiClient:
    options.setdefault("sleep", Sleeps())
    options.setdefault("rng", random.Random(7))
    return ApiClient(base_url, "agent", SECRET, transport=httpx.MockTransport(mock), **options)


class Wrapped(httpx.BaseTransport):
    """The real transport behind a middleware ``(request, forward) -> response``."""

    def __init__(self, middleware: Callable[[httpx.Request, Forward], httpx.Response]) -> None:
        self.inner = httpx.HTTPTransport()
        self.middleware = middleware

    def forward(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.middleware(request, self.forward)

    def close(self) -> None:
        self.inner.close()


def delivered(response: httpx.Response) -> None:
    """Let the server's answer arrive, then lose it (as a dropped connection would)."""
    response.read()
    response.close()


def entries(count: int, prefix: str = "id") -> bytes:
    return csv_bytes(
        ["objectGUID", "dn"], [(f"{prefix}{n:05d}", f"cn=u{n},ou=x") for n in range(count)]
    )


def real_client(server: ServerProcess, **options: Any) -> ApiClient:
    options.setdefault("sleep", Sleeps())
    options.setdefault("rng", random.Random(7))
    options.setdefault("timeout", 30.0)
    return ApiClient(server.url, "agent", SECRET, **options)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def wait_final(client: ApiClient, session_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = client.session(session_id)
        if state["state"] in serverutil.FINAL:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.02)


def full_load(client: ApiClient, tmp_path: Path, data: bytes) -> str:
    """A complete session through the client: entries ``data``, no members; waits for done."""
    session_id = client.open_session("AD", "agent-1", "complete")
    receipts = [
        client.upload(session_id, write(tmp_path / f"{ENTRIES}.sorted.csv", data)),
        client.upload(session_id, write(tmp_path / f"{MEMBERS}.sorted.csv", b"dn,member\n")),
    ]
    assert client.commit(session_id, receipts)["state"] in {"queued", "processing", "done"}
    assert wait_final(client, session_id)["state"] == "done"
    return session_id


# ---------------------------------------------------------------------------------- token


def test_token_is_fetched_lazily_cached_and_refreshed_before_expiry() -> None:
    mock, clock = Mock(expires_in=100), Clock()
    with mock_client(mock, clock=clock) as client:
        assert mock.tokens == 0  # lazily: nothing sent yet
        client.session(SESSION)
        clock.now += 89  # 11 s left: more than min(60, 10 % of 100) = 10
        client.session(SESSION)
        assert mock.tokens == 1
        clock.now += 1.5  # 9.5 s left: refresh before the server could see it expired
        client.session(SESSION)
        assert mock.tokens == 2
        used = [r.headers["authorization"] for r in mock.api_requests]
        assert used == ["Bearer t1", "Bearer t1", "Bearer t2"]
        form = httpx.QueryParams(mock.requests[0].content.decode())
        assert dict(form) == {
            "grant_type": "client_credentials",
            "client_id": "agent",
            "client_secret": SECRET,
            "scope": "usercube_api",
        }


def test_a_long_token_is_refreshed_a_minute_before_expiry() -> None:
    mock, clock = Mock(expires_in=3600), Clock()
    with mock_client(mock, clock=clock) as client:
        client.session(SESSION)
        clock.now += 3539
        client.session(SESSION)
        assert mock.tokens == 1
        clock.now += 2
        client.session(SESSION)
        assert mock.tokens == 2


def test_a_401_fetches_a_new_token_once_then_fails() -> None:
    mock = Mock()
    unauthorized = httpx.Response(401, json={"error": "invalid or expired token"})
    mock.script = [unauthorized]
    sleeps = Sleeps()
    with mock_client(mock, sleep=sleeps) as client:
        assert client.session(SESSION)["id"] == SESSION
        assert mock.tokens == 2
        assert [r.headers["authorization"] for r in mock.api_requests] == [
            "Bearer t1",
            "Bearer t2",
        ]
        mock.script = [unauthorized, unauthorized]
        with pytest.raises(ServerError) as caught:
            client.session(SESSION)
    assert str(caught.value) == (
        f"server GET /api/sessions/{SESSION}: 401 invalid or expired token"
    )
    assert mock.tokens == 3 and sleeps == []  # not retried


def test_a_bad_secret_is_one_line_without_the_secret(
    server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-never-shown"
    caplog.set_level(logging.DEBUG)  # httpx and httpcore too, at their most talkative
    sleeps = Sleeps()
    client = ApiClient(server.url, "agent", secret, sleep=sleeps)
    with client, pytest.raises(ServerError) as caught:
        client.sessions("AD")
    message = str(caught.value)
    assert message == (
        "server POST /connect/token: 401 invalid_client: unknown client or wrong secret"
    )
    assert sleeps == []
    assert secret not in repr(client) and "agent" in repr(client)
    assert secret not in repr(vars(client))
    assert secret not in caplog.text and "/connect/token" in caplog.text
    # A good secret: the token shows neither in the logs.
    caplog.clear()
    with real_client(server) as good:
        good.sessions("AD")
        token = good.auth.token
        assert token is not None
    assert SECRET not in caplog.text and token.value not in caplog.text


# ---------------------------------------------------------------------------------- retries


def test_retry_after_is_honoured_and_capped() -> None:
    mock = Mock()
    mock.script = [
        httpx.Response(503, json={"error": "busy"}, headers={"Retry-After": "2"}),
        httpx.Response(429, headers={"Retry-After": "100"}),
        httpx.Response(
            503, headers={"Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())}
        ),
    ]
    sleeps = Sleeps()
    with mock_client(mock, sleep=sleeps, retry=RetryPolicy(max_delay=30)) as client:
        assert client.session(SESSION)["id"] == SESSION
    assert sleeps[:2] == [2, 30]
    assert 0 <= sleeps[2] <= 1  # an HTTP date: "now" means at once


def test_backoff_is_jittered_exponential_and_gives_up_within_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mock = Mock()
    mock.default = httpx.Response(502, text="Bad Gateway")
    sleeps = Sleeps()
    policy = RetryPolicy(total_seconds=20, first_delay=0.5, max_delay=4)
    with (
        mock_client(mock, sleep=sleeps, retry=policy) as client,
        pytest.raises(ServerError) as caught,
    ):
        client.session(SESSION)
    assert len(sleeps) >= 6
    for attempt, delay in enumerate(sleeps):
        assert 0 <= delay <= min(4, 0.5 * 2**attempt)
    assert len(set(sleeps)) == len(sleeps)  # jittered: no two pauses alike
    assert sum(sleeps) <= 20
    assert len(mock.api_requests) == len(sleeps) + 1
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"server GET /api/sessions/{SESSION}: gave up after ")
    assert f"{len(sleeps) + 1} attempts and {sum(sleeps):.1f} s of waiting: 502 Bad Gateway" in (
        message
    )
    warnings = [r for r in caplog.records if r.name == "prepsync" and r.levelno == logging.WARNING]
    assert len(warnings) == len(sleeps)


def test_transport_errors_and_5xx_are_retried_other_4xx_are_not() -> None:
    mock = Mock()
    request = httpx.Request("GET", "http://127.0.0.1:9/")
    mock.script = [
        httpx.ConnectError("refused", request=request),
        httpx.ReadTimeout("slow", request=request),
        httpx.RemoteProtocolError("cut", request=request),
        httpx.Response(500, json={"error": "internal server error"}),
        httpx.Response(504),
    ]
    sleeps = Sleeps()
    with mock_client(mock, sleep=sleeps) as client:
        assert client.session(SESSION)["id"] == SESSION
        assert len(sleeps) == 5
        mock.script = [httpx.Response(422, json={"error": "x.csv: not uploaded", "file": "x"})]
        with pytest.raises(ServerError) as caught:
            client.commit(SESSION, [])
        assert (
            str(caught.value)
            == f"server POST /api/sessions/{SESSION}/commit: 422 x.csv: not uploaded"
        )
        assert len(sleeps) == 5


def test_a_507_is_retried_and_the_give_up_says_the_servers_disk_is_full() -> None:
    """Whether the server's text says it (this server's) or not (any other 507)."""
    for text in ("the server's disk is full: cannot store the chunk", "no room"):
        mock = Mock()
        mock.default = httpx.Response(507, json={"error": text})
        sleeps = Sleeps()
        policy = RetryPolicy(total_seconds=5, first_delay=1, max_delay=1)
        with (
            mock_client(mock, sleep=sleeps, retry=policy) as client,
            pytest.raises(ServerError) as caught,
        ):
            client.cancel(SESSION)
        message = str(caught.value)
        assert len(sleeps) >= 2, "a full disk is retried: room may be made meanwhile"
        assert message.startswith(f"server POST /api/sessions/{SESSION}/cancel: gave up")
        assert message.count("the server's disk is full") == 1, message
        assert message.endswith(text if "disk" in text else f"disk is full: {text}"), message


def test_base_url_with_a_path_prefix_and_names_needing_escapes() -> None:
    for base_url in ("http://127.0.0.1:9/prefix", "http://127.0.0.1:9/prefix/"):
        mock = Mock()
        mock.default = httpx.Response(200, content=b"a,b\n")
        with mock_client(mock, base_url=base_url) as client:
            assert client.resources("A B", "x/y") == b"a,b\n"
        assert [r.url.raw_path for r in mock.requests] == [
            b"/prefix/connect/token",
            b"/prefix/api/connectors/A%20B/tables/x%2Fy/resources",
        ]


def test_mappings_of_another_connector_are_refused() -> None:
    mock = Mock()
    mock.default = httpx.Response(
        200, json={"connector": "HR", "entityTypeMappings": [], "entityAssociationMappings": []}
    )
    with mock_client(mock) as client, pytest.raises(ServerError, match="connector 'HR', not 'AD'"):
        client.mappings("AD")


# ---------------------------------------------------------------------------------- sessions


def test_mappings_sessions_commit_queued_cancel_force_and_resources(
    server: ServerProcess, api: Api, tmp_path: Path
) -> None:
    with real_client(server, chunk_size=1000) as client:
        mappings = client.mappings("AD")
        assert mappings.connector == "AD"
        assert {m.table for m in mappings.entity_types} == {ENTRIES}
        rows = entries(300)
        complete = full_load(client, tmp_path, rows)
        assert client.resources("AD", ENTRIES) == rows
        # A session committed behind an open one waits: "queued". The one agent of the
        # connector opens it through another client (its own would cancel it as an orphan).
        operator = ApiClient(server.url, OPERATOR, OPERATOR_SECRET, timeout=30.0)
        blocker = operator.open_session("AD", "agent-1", "incremental")
        session_id = client.open_session("AD", "agent-1", "Incremental")
        delta = csv_bytes(["command", "objectGUID", "dn"], [("insert", "zz", "new")])
        receipt = client.upload(session_id, write(tmp_path / f"{ENTRIES}.sorted.delta.csv", delta))
        assert receipt == FileReceipt(f"{ENTRIES}.sorted.delta.csv", len(delta), xxh3(delta))
        committed = client.commit(session_id, [receipt])
        assert committed["id"] == session_id and committed["state"] == "queued"
        assert client.commit(session_id, [receipt])["state"] == "queued"  # again: harmless
        listed = [s["id"] for s in client.sessions("AD")]
        assert listed[:3] == [session_id, blocker, complete]
        with pytest.raises(ServerError) as caught:
            operator.force(session_id)
        assert str(caught.value) == (
            f"server POST /api/sessions/{session_id}/force: "
            "409 only a blocked session can be forced; it is queued"
        )
        with pytest.raises(ServerError) as caught:  # the agent's client is no operator
            client.force(session_id)
        assert caught.value.status == 403 and "needs an operator" in str(caught.value)
        assert operator.cancel(blocker)["state"] == "cancelled"
        operator.close()
        assert wait_final(client, session_id)["state"] == "done"
        assert client.resources("AD", ENTRIES) == rows + b"zz,new\n"


def test_commit_refusals_surface_the_servers_text(server: ServerProcess, tmp_path: Path) -> None:
    with real_client(server) as client:
        session_id = client.open_session("AD", "agent-1", "complete")
        data = entries(10)
        receipt = client.upload(session_id, write(tmp_path / f"{ENTRIES}.sorted.csv", data))
        wrong = FileReceipt(receipt.name, receipt.size, "0" * 32)
        with pytest.raises(ServerError) as caught:
            client.commit(session_id, [wrong])
        assert str(caught.value) == (
            f"server POST /api/sessions/{session_id}/commit: 422 {ENTRIES}.sorted.csv: "
            f"xxh3_128 differs (server has {receipt.xxh3_128})"
        )
        with pytest.raises(ServerError, match=r": 404 unknown session$"):
            client.session("0" * 8 + "-0000-4000-8000-" + "0" * 12)
        with pytest.raises(ServerError, match=r": 400 a complete session carries only"):
            client.upload(session_id, tmp_path / f"{ENTRIES}.sorted.csv", name="x.delta.csv")
        client.cancel(session_id)


def opening(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.endswith("/sessions")


def lose_the_first_answer() -> Callable[[httpx.Request, Forward], httpx.Response]:
    """The first opening reaches the server; its answer does not."""
    lost = [False]

    def middleware(request: httpx.Request, forward: Forward) -> httpx.Response:
        if opening(request) and not lost[0]:
            lost[0] = True
            delivered(forward(request))
            raise httpx.ReadError("connection reset", request=request)
        return forward(request)

    return middleware


def deliver_the_first_late() -> Callable[[httpx.Request, Forward], httpx.Response]:
    """The first opening times out and reaches the server only just before the second."""
    held: list[httpx.Request] = []

    def middleware(request: httpx.Request, forward: Forward) -> httpx.Response:
        if opening(request) and not held:
            held.append(request)
            raise httpx.ReadTimeout("timed out", request=request)
        if opening(request) and held[-1] is not request:
            delivered(forward(held[0]))
            held.append(request)
        return forward(request)

    return middleware


@pytest.mark.parametrize("fault", [lose_the_first_answer, deliver_the_first_late])
def test_a_lost_opening_leaves_one_open_session(
    server: ServerProcess, fault: Callable[[], Callable[[httpx.Request, Forward], httpx.Response]]
) -> None:
    agent = "agent-1"  # the connector's agent (another one's incremental session is refused)
    with real_client(server, transport=Wrapped(fault())) as client:
        before = {s["id"] for s in client.sessions("AD")}
        session_id = client.open_session("AD", agent, "incremental")
        new = {s["id"]: s for s in client.sessions("AD") if s["id"] not in before}
        # Adopted, or reposted with the late one cancelled: it would hold the connector's
        # later sessions back for the server's session timeout.
        assert [i for i, s in new.items() if s["state"] == "open"] == [session_id]
        assert len(new) == (1 if fault is lose_the_first_answer else 2)
        assert all(s["agent"] == agent for s in new.values())
        client.cancel(session_id)


def test_a_refused_connection_when_opening_reposts(server: ServerProcess) -> None:
    refused = [True]

    def refuse_once(request: httpx.Request, forward: Forward) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/sessions") and refused:
            refused.pop()
            raise httpx.ConnectError("connection refused", request=request)
        return forward(request)

    with real_client(server, transport=Wrapped(refuse_once)) as client:
        before = {s["id"] for s in client.sessions("AD")}
        session_id = client.open_session("AD", "agent-1", "incremental")
        new = [s["id"] for s in client.sessions("AD") if s["id"] not in before]
        assert new == [session_id]
        client.cancel(session_id)


def test_cancel_after_a_lost_answer_is_success() -> None:
    mock = Mock()
    request = httpx.Request("POST", "http://127.0.0.1:9/")
    cancelled = {"id": SESSION, "state": "cancelled", "forced": False}
    mock.script = [
        httpx.ReadError("reset", request=request),  # the cancel arrived, its answer did not
        httpx.Response(409, json={"error": "a cancelled session cannot be cancelled"}),
        httpx.Response(200, json=cancelled),
    ]
    with mock_client(mock) as client:
        assert client.cancel(SESSION) == cancelled
        mock.script = [httpx.Response(409, json={"error": "a done session cannot be cancelled"})]
        with pytest.raises(ServerError, match="409 a done session cannot be cancelled"):
            client.cancel(SESSION)


# ---------------------------------------------------------------------------------- uploads


def test_multi_chunk_upload_with_dropped_and_repeated_requests(
    server: ServerProcess, api: Api, tmp_path: Path
) -> None:
    puts = [0]

    def faults(request: httpx.Request, forward: Forward) -> httpx.Response:
        if request.method != "PUT":
            return forward(request)
        puts[0] += 1
        if puts[0] % 5 == 0:  # never arrives
            raise httpx.ConnectError("connection refused", request=request)
        if puts[0] % 5 == 2:  # arrives, the answer is lost
            delivered(forward(request))
            raise httpx.ReadError("connection reset", request=request)
        if puts[0] % 5 == 3:  # arrives twice
            delivered(forward(request))
        return forward(request)

    data = entries(400)  # about 8 KB: 9 chunks of 1000 bytes
    sleeps = Sleeps()
    progress: list[tuple[int, int]] = []
    with real_client(server, transport=Wrapped(faults), chunk_size=1000, sleep=sleeps) as client:
        session_id = client.open_session("AD", "agent-1", "complete")
        path = write(tmp_path / "entries.csv", data)
        receipt = client.upload(
            session_id, path, f"{ENTRIES}.sorted.csv", lambda *a: progress.append(a)
        )
        assert receipt == FileReceipt(f"{ENTRIES}.sorted.csv", len(data), xxh3(data))
        assert len(sleeps) >= 3
        done = [sent for sent, total in progress]
        assert done == sorted(done) and progress[-1] == (len(data), len(data))
        members = client.upload(
            session_id, write(tmp_path / f"{MEMBERS}.sorted.csv", b"dn,member\n")
        )
        assert client.commit(session_id, [receipt, members])["state"] in {
            "queued",
            "processing",
            "done",
        }
        assert wait_final(client, session_id)["state"] == "done"
        assert client.resources("AD", ENTRIES) == data


def test_upload_resumes_from_the_servers_count_and_hashes_the_whole_file(
    server: ServerProcess, api: Api, tmp_path: Path
) -> None:
    data = entries(200)
    name = f"{ENTRIES}.sorted.csv"
    with real_client(server, chunk_size=1000) as client:
        session_id = client.open_session("AD", "agent-1", "complete")
        api.put_chunk(session_id, name, data[:2345], 0, len(data))  # an earlier, cut run
        puts: list[str] = []

        def record(request: httpx.Request, forward: Forward) -> httpx.Response:
            if request.method == "PUT":
                puts.append(request.headers["content-range"])
            return forward(request)

        with real_client(server, chunk_size=1000, transport=Wrapped(record)) as resumer:
            receipt = resumer.upload(session_id, write(tmp_path / name, data))
        assert puts[0] == f"bytes 2345-3344/{len(data)}"
        assert receipt.xxh3_128 == xxh3(data) and receipt.size == len(data)
        assert api.get(f"/api/sessions/{session_id}/files/{name}").json()["size"] == len(data)
        client.cancel(session_id)


def test_a_416_or_a_server_holding_more_is_followed(
    server: ServerProcess, api: Api, tmp_path: Path
) -> None:
    name = f"{ENTRIES}.sorted.csv"
    with real_client(server, chunk_size=1000) as client:
        session_id = client.open_session("AD", "agent-1", "complete")
        url = f"/api/sessions/{session_id}/files/{name}"
        # The server holds more than the (one-chunk) file: it is sent again whole.
        api.put_chunk(session_id, name, b"x" * 900, 0, 900)
        small = b"objectGUID,dn\na,1\n"
        receipt = client.upload(session_id, write(tmp_path / name, small))
        assert receipt == FileReceipt(name, len(small), xxh3(small))
        assert api.get(url).json()["size"] == len(small)
        # Longer than a chunk: that cannot be repaired in this session.
        api.put_chunk(session_id, name, b"x" * 5000, 0, 5000)
        with pytest.raises(ServerError, match="holds 5000 bytes, more than the file's 3000"):
            client.upload(session_id, write(tmp_path / name, b"y" * 3000))
        client.cancel(session_id)

    # A 416 (the server lost bytes since it said how many it had) moves the upload back.
    stored, lost = bytearray(), list[bool]()

    @serverutil.answering_tokens
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"size": len(stored)})
        first, _, _total = request.headers["content-range"][6:].partition("/")
        start = int(first.split("-")[0])
        if start == 3000 and not lost:  # a "crash" loses bytes 2000-2999
            lost.append(True)
            del stored[2000:]
        if start > len(stored):
            return httpx.Response(416, json={"error": "gap", "size": len(stored)})
        stored[start : start + len(request.content)] = request.content
        return httpx.Response(200, json={"size": len(stored)})

    data = bytes(random.Random(1).randbytes(4500))
    sleeps = Sleeps()
    with mock_client(handler, chunk_size=1000, sleep=sleeps) as client:
        receipt = client.upload(SESSION, write(tmp_path / "x.csv", data))
    assert bytes(stored) == data and receipt == FileReceipt("x.csv", 4500, xxh3(data))
    assert len(sleeps) == 1
    # A server that keeps losing what it acknowledged: the budget ends it.
    stored.clear()

    def forgetful(request: httpx.Request) -> httpx.Response:
        lost.clear()
        return handler(request)

    with (
        mock_client(forgetful, chunk_size=1000, retry=RetryPolicy(total_seconds=5)) as client,
        pytest.raises(ServerError, match=r"gave up after .*: 416 gap$"),
    ):
        client.upload(SESSION, write(tmp_path / "x.csv", data))

    @serverutil.answering_tokens
    def amnesic(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"size": 0})  # acknowledges, keeps nothing

    with (
        mock_client(amnesic, chunk_size=1000, retry=RetryPolicy(total_seconds=5)) as client,
        pytest.raises(
            ServerError, match=r"gave up after .*: holds 0 bytes after bytes up to 1000$"
        ),
    ):
        client.upload(SESSION, write(tmp_path / "x.csv", data))


def test_empty_file_upload(server: ServerProcess, api: Api, tmp_path: Path) -> None:
    name = f"{ENTRIES}.sorted.delta.csv"
    with real_client(server) as client:
        session_id = client.open_session("AD", "agent-1", "incremental")
        receipt = client.upload(session_id, write(tmp_path / name, b""))
        assert receipt == FileReceipt(name, 0, xxh3(b""))
        assert api.get(f"/api/sessions/{session_id}/files/{name}").json()["size"] == 0
        assert client.upload(session_id, tmp_path / name) == receipt  # already there
        client.cancel(session_id)


def test_server_killed_mid_chunk_and_restarted_on_the_same_port(tmp_path: Path) -> None:
    server = ServerProcess(write_config(tmp_path), tmp_path / "data", tmp_path / "server.log")
    server.start()
    name = f"{ENTRIES}.sorted.csv"
    data = entries(2000)  # about 40 KB
    chunk = 8000
    starts: list[int] = []  # of every PUT of the file
    events: list[str] = []  # "killed", "restarted"
    session: list[str] = []

    def stored_size() -> int:
        path = tmp_path / "data" / "sessions" / session[0] / name
        return path.stat().st_size if path.exists() else 0

    def cut(request: httpx.Request, forward: Forward) -> httpx.Response:
        if request.method != "PUT" or name not in request.url.path:
            return forward(request)
        start = int(request.headers["content-range"][6:].split("-")[0])
        starts.append(start)
        if len(starts) != 3:
            return forward(request)
        body = request.content

        def halves() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            deadline = time.monotonic() + 10
            while stored_size() < start + len(body) // 2:  # the half is on the server's disk
                assert time.monotonic() < deadline
                time.sleep(0.01)
            server.kill()
            events.append("killed")
            yield body[len(body) // 2 :]

        return forward(
            httpx.Request(request.method, request.url, headers=request.headers, content=halves())
        )

    def restart() -> None:
        if events == ["killed"]:
            events.append("restarted")
            server.start()  # on the same port: the client retries the same URL

    try:
        sleeps = Sleeps(restart)
        with real_client(server, transport=Wrapped(cut), chunk_size=chunk, sleep=sleeps) as client:
            session_id = client.open_session("AD", "agent-1", "complete")
            session.append(session_id)
            receipt = client.upload(session_id, write(tmp_path / name, data))
            assert events == ["killed", "restarted"] and sleeps
            assert receipt == FileReceipt(name, len(data), xxh3(data))
            members = client.upload(
                session_id, write(tmp_path / f"{MEMBERS}.sorted.csv", b"dn,member\n")
            )
            client.commit(session_id, [receipt, members])
            assert wait_final(client, session_id)["state"] == "done"
            assert client.resources("AD", ENTRIES) == data
        # The cut chunk resumed where the server's bytes ended, not at a chunk boundary.
        assert starts[:4] == [0, chunk, 2 * chunk, 2 * chunk + chunk // 2]
        log = (tmp_path / "server.log").read_text()
        assert "Traceback" not in log, log
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- ?wait


def test_a_held_status_request_answers_when_the_state_changes(
    server: ServerProcess, api: Api
) -> None:
    with real_client(server) as client:
        session_id = client.open_session("AD", "agent-1", "complete")
        started = time.monotonic()
        assert client.session(session_id, wait=0.3)["state"] == "open"  # no change: held
        assert time.monotonic() - started >= 0.25
        timer = threading.Timer(0.3, lambda: api.post(f"/api/sessions/{session_id}/cancel"))
        timer.start()
        try:
            started = time.monotonic()
            assert client.session(session_id, wait=4.0)["state"] == "cancelled"
            held = time.monotonic() - started
        finally:
            timer.join()
        assert 0.25 <= held < 3.0  # answered at the change, not at the end of the wait
        for bad in ("x", "-1", "inf", "nan"):
            answer = api.get(f"/api/sessions/{session_id}", params={"wait": bad})
            assert answer.status_code == 400, bad
            assert "'wait' must be a number" in answer.json()["error"]
