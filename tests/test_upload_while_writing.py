"""Sending each table's file while the pipeline still writes it (prepsync.sync.UploadWhileWriting
and prepsync.client.FileUpload), against the real server on 127.0.0.1."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from serverutil import SECRET, Api, ServerProcess, csv_bytes, mock_api, xxh3

from prepsync.client import ApiClient, FileReceipt, FileUpload, RetryPolicy
from prepsync.errors import InputError, ServerError
from prepsync.request import PrepareRequest
from prepsync.sync import UploadWhileWriting, synchronize

ENTRIES = "ADExport_entries"
MEMBERS = "ADExport_members"
CHUNK = 1000
Forward = Callable[[httpx.Request], httpx.Response]


class Recorder(httpx.BaseTransport):
    """The real transport, recording each PUT's Content-Range (and when it went), and faulty
    every ``fault_every``-th PUT: lost on the way, or arrived with its answer lost."""

    def __init__(self, fault_every: int = 0) -> None:
        self.inner = httpx.HTTPTransport()
        self.puts: list[tuple[str, str]] = []  # (file name, Content-Range)
        self.fault_every = fault_every
        self.put_seen = threading.Event()  # set once a PUT is on its way

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "PUT":
            return self.inner.handle_request(request)
        name = request.url.path.rsplit("/", 1)[-1]
        self.puts.append((name, request.headers.get("content-range", "")))
        self.put_seen.set()
        count = len(self.puts)
        if self.fault_every and count % self.fault_every == 0:
            raise httpx.ConnectError("connection refused", request=request)
        if self.fault_every and count % self.fault_every == 1 and count > 1:
            answer = self.inner.handle_request(request)
            answer.read()
            answer.close()
            raise httpx.ReadError("connection reset", request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def client(server: ServerProcess, transport: httpx.BaseTransport, **options: object) -> ApiClient:
    return ApiClient(
        server.url,
        "agent",
        SECRET,
        transport=transport,
        chunk_size=CHUNK,
        timeout=30.0,
        sleep=lambda _: None,
        rng=random.Random(3),
        **options,  # type: ignore[arg-type]
    )


def entries(count: int) -> bytes:
    return csv_bytes(["objectGUID", "dn"], [(f"id{n:06d}", f"cn=u{n},ou=x") for n in range(count)])


def server_size(api: Api, session_id: str, name: str) -> int:
    answer = api.get(f"/api/sessions/{session_id}/files/{name}")
    return int(answer.json()["size"]) if answer.status_code == 200 else 0


def span(content_range: str) -> tuple[int, int]:
    """``bytes a-b/total`` -> (a, b)."""
    first, last = content_range.removeprefix("bytes ").split("/")[0].split("-")
    return int(first), int(last)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.mark.parametrize("fault_every", [0, 4], ids=["clean", "faulty"])
def test_whole_chunks_go_while_the_file_grows_and_the_rest_once_it_is_written(
    server: ServerProcess,
    api: Api,
    tmp_path: Path,
    fault_every: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idle_looks = threading.Semaphore(0)  # released each time the sender finds nothing to send
    ready = FileUpload.ready

    def counted(upload: FileUpload, *, written: bool) -> bool:
        answer = ready(upload, written=written)
        if not answer:
            idle_looks.release()
        return answer

    monkeypatch.setattr(FileUpload, "ready", counted)
    data = entries(600)  # about 12 KB: a dozen chunks
    members = b"dn,member\n"
    grown = len(data) // 2 + 123  # not a chunk boundary
    transport = Recorder(fault_every)
    with client(server, transport) as agent:
        session_id = agent.open_session("AD", "agent-1", "complete")
        sender = UploadWhileWriting(agent, session_id, 2)
        temp = tmp_path / f"{ENTRIES}.sorted.csv.tmp"
        with temp.open("wb", buffering=0) as writer:
            writer.write(data[:grown])
            sender.writing(0, temp, f"{ENTRIES}.sorted.csv")
            # Before the table is done, the server gets every whole chunk written so far...
            whole = grown - grown % CHUNK
            wait_for(
                lambda: server_size(api, session_id, f"{ENTRIES}.sorted.csv") == whole,
                "the chunks written so far",
            )
            # ...and nothing past them, however often the sender looks while the writer pauses.
            for _look in range(5):
                assert idle_looks.acquire(timeout=20), "the sender stopped looking"
            assert server_size(api, session_id, f"{ENTRIES}.sorted.csv") == whole
            before_the_rest = len(transport.puts)
            writer.write(data[grown:])
        members_file = tmp_path / f"{MEMBERS}.sorted.csv.tmp"
        members_file.write_bytes(members)
        sender.writing(1, members_file, f"{MEMBERS}.sorted.csv")
        sender.written(1)
        sender.written(0)
        receipts = sender.finish()
        assert receipts == [
            FileReceipt(f"{ENTRIES}.sorted.csv", len(data), xxh3(data)),
            FileReceipt(f"{MEMBERS}.sorted.csv", len(members), xxh3(members)),
        ]
        assert agent.commit(session_id, receipts)["state"] in {"queued", "processing", "done"}
        assert api.wait(session_id)["state"] == "done"
        assert agent.resources("AD", ENTRIES) == data
    ranges = [r for name, r in transport.puts if name == f"{ENTRIES}.sorted.csv"]
    early = [span(r) for name, r in transport.puts[:before_the_rest] if name.startswith(ENTRIES)]
    # Before the rest was written, chunks went with the total unknown, each a whole chunk of
    # what the file held (then, more whole chunks may go before the table is done)...
    assert early and all(last < whole and last - first == CHUNK - 1 for first, last in early)
    assert all(r.endswith("/*") for _name, r in transport.puts[:before_the_rest])
    # ...and the last one states the total.
    assert ranges[-1] == f"bytes {len(data) - len(data) % CHUNK}-{len(data) - 1}/{len(data)}"


def test_a_refused_chunk_is_reported_by_finish(
    server: ServerProcess, api: Api, tmp_path: Path
) -> None:
    with client(server, Recorder(), retry=RetryPolicy(total_seconds=0)) as agent:
        session_id = agent.open_session("AD", "agent-1", "complete")
        agent.cancel(session_id)  # every upload to it is refused from now on (409)
        sender = UploadWhileWriting(agent, session_id, 1)
        temp = tmp_path / "entries.tmp"
        temp.write_bytes(entries(200))
        sender.writing(0, temp, f"{ENTRIES}.sorted.csv")
        sender.written(0)
        with pytest.raises(ServerError, match="409"):
            sender.finish()


def test_abort_stops_a_sender_waiting_for_a_table_that_never_ends(
    server: ServerProcess, tmp_path: Path
) -> None:
    with client(server, Recorder()) as agent:
        session_id = agent.open_session("AD", "agent-1", "complete")
        sender = UploadWhileWriting(agent, session_id, 2)
        temp = tmp_path / "entries.tmp"
        temp.write_bytes(b"objectGUID,dn\n")
        sender.writing(0, temp, f"{ENTRIES}.sorted.csv")
        started = time.monotonic()
        sender.abort()
        assert time.monotonic() - started < 5
        assert not any(t.name == "prepsync-upload" and t.is_alive() for t in threading.enumerate())
        agent.cancel(session_id)


def test_an_online_run_sends_while_its_tables_are_written(
    server: ServerProcess, tmp_path: Path
) -> None:
    sources, working = tmp_path / "sources", tmp_path / "work"
    sources.mkdir()
    working.mkdir()
    rows = 200_000  # several merge steps (MERGE_STEP_ROWS) of writing
    (sources / f"{ENTRIES}.csv").write_bytes(entries(rows))
    (sources / f"{MEMBERS}.csv").write_bytes(b"dn,member\n")
    transport = Recorder()
    held_at: list[int] = []

    def progress(table: str, phase: str, done: int, total: int) -> None:
        # Half-way through writing entries, hold its thread until a chunk of it went out:
        # this returns only if the upload runs while the table is still being written.
        if table == ENTRIES and phase == "write" and 0 < done < total and not held_at:
            held_at.append(done)
            wait_for(
                lambda: any(name.startswith(ENTRIES) for name, _r in transport.puts),
                "a chunk of entries sent while it is written",
            )

    # The whole table fits one sorted run: no intermediate merge pass, so from the first
    # merge step on, rows reach the file (in 1 MiB blocks) while the rest is still merged.
    request = PrepareRequest(
        connector="AD", mode="complete", sources_dir=sources, working_dir=working
    )
    with ApiClient(
        server.url, "agent", SECRET, transport=transport, chunk_size=64 << 10, timeout=30.0
    ) as agent:
        run, delivery = synchronize(agent, request, agent="agent-1", tables=None, progress=progress)
    assert held_at  # the hold above happened, and was released by the upload
    sorted_file = working / f"{ENTRIES}.sorted.csv"
    data = sorted_file.read_bytes()
    assert delivery.files[0] == FileReceipt(sorted_file.name, len(data), xxh3(data))
    assert run.tables[0].kept == rows
    assert server.wait(delivery.session_id) == "done"
    assert server.resources(ENTRIES) == data


def test_abort_ends_a_retry_pause_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server gone mid-upload: the sender pauses before each retry (up to 30 s a pause);
    abort() (Ctrl-C) must not wait those out before the session can be cancelled."""
    down, asked, long_pause = threading.Event(), threading.Event(), threading.Event()

    def handle(request: httpx.Request) -> httpx.Response:
        if down.is_set():
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "GET":
            asked.set()
            return httpx.Response(404, json={"error": "no file"})
        return httpx.Response(200, json={"name": "x", "size": 0})

    pause = UploadWhileWriting._pause

    def observed(sender: UploadWhileWriting, seconds: float) -> None:
        if seconds >= 1.0:  # one abort() must cut short, not wait out
            long_pause.set()
        pause(sender, seconds)

    monkeypatch.setattr(UploadWhileWriting, "_pause", observed)

    # The client's own retry policy and sleep: the sender's pause is what abort() must end.
    api = mock_api(handle, chunk_size=100, retry=RetryPolicy(), sleep=time.sleep)
    temp = tmp_path / "entries.tmp"
    temp.write_bytes(b"objectGUID,dn\n")
    sender = UploadWhileWriting(api, "S", 1)
    sender.writing(0, temp, f"{ENTRIES}.sorted.csv")
    assert asked.wait(10)  # the first GET (404: nothing there yet) is answered
    down.set()
    with temp.open("ab") as grow:
        grow.write(b"x" * 1000)  # whole chunks to send: every PUT now fails and is retried
    # Into the retries' pauses (0.5 s doubling, jittered) until one of a second or more.
    assert long_pause.wait(60)
    started = time.monotonic()
    sender.abort()
    assert time.monotonic() - started < 1.0
    assert not any(t.name == "prepsync-upload" and t.is_alive() for t in threading.enumerate())


def test_a_table_failing_after_chunks_went_cancels_the_session(
    server: ServerProcess, tmp_path: Path
) -> None:
    sources, working = tmp_path / "sources", tmp_path / "work"
    sources.mkdir()
    working.mkdir()
    (sources / f"{ENTRIES}.csv").write_bytes(entries(200_000))
    # The second table (after the first, parallel=1) has an unterminated quote.
    (sources / f"{MEMBERS}.csv").write_bytes(b"dn,member\n" + b"a,b\n" * 100 + b'"bad\n')
    transport = Recorder()
    request = PrepareRequest(
        connector="AD", mode="complete", sources_dir=sources, working_dir=working, parallel=1
    )
    held: list[str] = []

    def hold_the_second_table(table: str, phase: str, done: int, total: int) -> None:
        # Its failure must come after chunks of the first table went, however slow the sender
        # thread is to get going on a busy machine.
        if table == MEMBERS:
            held.append(phase)
            assert transport.put_seen.wait(60), "no chunk of the first table went"

    with ApiClient(
        server.url, "agent", SECRET, transport=transport, chunk_size=64 << 10, timeout=30.0
    ) as agent:
        with pytest.raises(InputError, match="ADExport_members"):
            synchronize(
                agent, request, agent="agent-1", tables=None, progress=hold_the_second_table
            )
        session = agent.sessions("AD")[0]
    assert held  # the second table waited for them...
    assert any(name.startswith(ENTRIES) for name, _r in transport.puts)  # chunks had gone
    assert session["state"] == "cancelled"  # nothing of it can be committed now
    assert not (working / ".prepsync-session.json").exists()
    assert not (working / f"{ENTRIES}.sorted.csv").exists()  # no output replaced
    assert not any(t.name == "prepsync-upload" and t.is_alive() for t in threading.enumerate())
