"""A disk filling up, on a small tmpfs mounted by the test (root and CAP_SYS_ADMIN needed, as
in CI; skipped with the reason otherwise):

- the agent's working directory, at every phase that writes there (the null-key output during
  the read, the spill files, the outputs written by the merge, the delta): each run fails in one
  line naming the problem, leaves nothing behind and the baselines as they were;
- the server's data directory, during an upload (the agent retries, or fails cleanly and its
  rerun completes) and during the apply (the server queues the session again and applies it
  once there is room): nothing lost, nothing applied twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chaos import (
    ENTRIES,
    TABLES,
    Agent,
    Comparison,
    Model,
    MountRefused,
    Server,
    assert_clean_failure,
    compare,
    fill,
    tmpfs,
)
from serverutil import CLIENT, OPERATOR, OPERATOR_SECRET, SECRET
from sites import entity_config, prepare_command


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    try:
        with tmpfs(tmp_path / "disk", 16 << 20) as mount:
            yield mount
    except MountRefused as refused:
        pytest.skip(f"no tmpfs to fill: {refused}")


def write_source(path: Path, rows: int, day: int) -> None:
    """Unsorted keys, a third of them null (the null-key output grows during the read), a few
    repeated (the duplicates output); from one day to the next, 1 % of the values change."""
    lines = ["id,v,ignored"]
    for i in range(rows):
        key = "" if i % 3 == 0 else f"{(i * 7919 - i % 50 // 49) % rows:07d}"
        lines.append(f"{key},{'value-' * 3}{i}{'-new' * day if i % 100 == 1 else ''},x")
    path.write_text("\n".join(lines) + "\n")


def test_working_directory_full_at_every_phase(tmp_path: Path, small_disk: Path) -> None:
    sources = tmp_path / "src"
    sources.mkdir()
    config = tmp_path / "conf.xml"
    config.write_text(entity_config("C", {"T": ("id", "v")}))
    write_source(sources / "T.csv", 90_000, day=0)

    def run(working: Path, mode: str) -> subprocess.CompletedProcess[str]:
        command = prepare_command(config, sources, working, "--memory-budget", "1MiB", mode=mode)
        # The run's up-front free-space check would refuse most of these fills before any
        # phase starts; this test is about space running out during the run.
        env = {**os.environ, "PREPSYNC_SPACE_CHECK": "0"}
        return subprocess.run(
            [*command, "--log-level", "Error"], capture_output=True, text=True, env=env
        )

    assert run(tmp_path / "first", "complete").returncode == 0  # the baseline, on a big disk
    write_source(sources / "T.csv", 90_000, day=1)  # today's export: the delta is small
    baseline = {p.name: p.read_bytes() for p in (sources / "previous").iterdir()}
    phases: dict[str, int] = {}
    succeeded = 0
    # The final merge frees the spill bytes it has read for the outputs to use, so only a narrow
    # band of free space (about 4.75 MiB here) runs out while the sorted output is written:
    # below it the spill files do not fit, above it everything does.
    near_the_end = range(4 << 20, 5632 << 10, 128 << 10)
    for leave in (0, 64 << 10, 512 << 10, 1536 << 10, 2 << 20, 3 << 20, *near_the_end, 12 << 20):
        working = small_disk / "Collect"
        working.mkdir()
        filler = fill(small_disk, leave)
        done = run(working, "incremental")
        filler.unlink()
        if done.returncode == 0:
            succeeded += 1
            # Put the old baseline back: every attempt starts from the same state.
            shutil.rmtree(sources / "previous")
            (sources / "previous").mkdir()
            for name, data in baseline.items():
                (sources / "previous" / name).write_bytes(data)
        else:
            assert_clean_failure(done)
            assert "No space left on device" in done.stderr, done.stderr
            assert "table T: writing" in done.stderr or f"writing {working}" in done.stderr
            for phase in ("null-key output", "spill file", "sorted output", "delta output"):
                if phase in done.stderr:
                    phases[phase] = phases.get(phase, 0) + 1
            assert sorted(p.name for p in working.iterdir()) == [".prepsync.lock"], leave
            after = {p.name: p.read_bytes() for p in (sources / "previous").iterdir()}
            assert after == baseline, leave
        shutil.rmtree(working)
    assert succeeded >= 1  # with room enough, the same run goes through
    assert {"null-key output", "spill file", "sorted output"} <= set(phases), phases


@pytest.fixture
def server_on_small_disk(tmp_path: Path, small_disk: Path) -> Iterator[tuple[Server, Agent, Model]]:
    server = Server(tmp_path / "server", data=small_disk / "data", store_retry_delay=0.3)
    server.start()
    try:
        agent = Agent(tmp_path / "agent", server.url)
        model = Model.create(seed=33, size=200)
        agent.write_exports(model.exports())
        done = agent.run("complete")
        assert done.returncode == 0, done.stderr
        yield server, agent, model
    finally:
        server.stop()


def assert_store(server: Server, model: Model) -> None:
    sessions = server.settle()
    expected = model.expected()
    for table in TABLES:
        assert compare(table, expected[table], server.resources(table)) == Comparison(), table
    assert [s["state"] for s in sessions if s["state"] not in ("done", "cancelled")] == []
    assert list((server.data / "sessions").iterdir()) == []


def grow(model: Model, rows: int) -> None:
    for _ in range(rows):
        model.insert()


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def test_server_disk_full_during_upload(
    server_on_small_disk: tuple[Server, Agent, Model], small_disk: Path
) -> None:
    server, agent, model = server_on_small_disk
    grow(model, 15_000)  # a big complete upload: about 1.7 MB
    agent.write_exports(model.exports())
    baselines = agent.baselines()
    # No room at all: the server cannot even record a session (5xx); the agent retries, then
    # gives up in one line, and nothing moves.
    filler = fill(small_disk, 4 << 10)
    failed = agent.run("complete", "--api-retry-seconds", "2")
    assert_clean_failure(failed)
    assert "gave up" in failed.stderr and ": 507 the server's disk is full" in failed.stderr, (
        failed.stderr
    )
    assert agent.baselines() == baselines
    assert agent.leftovers() == []
    filler.unlink()
    # Room for a part of the upload: the disk fills mid-upload, the agent retries, room is
    # made meanwhile, and the same run completes.
    filler = fill(small_disk, 600 << 10)
    process = agent.start("complete", "--api-retry-seconds", "60")
    deadline = time.monotonic() + 60
    while free_bytes(small_disk) > 64 << 10:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the upload never filled the disk"
        time.sleep(0.02)
    time.sleep(1.0)  # the agent meets the full disk and backs off
    assert process.poll() is None, process.communicate()
    filler.unlink()
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert_store(server, model)


def test_server_disk_full_during_apply(
    server_on_small_disk: tuple[Server, Agent, Model], small_disk: Path
) -> None:
    server, agent, model = server_on_small_disk
    grow(model, 12_000)  # an incremental of 12,000 inserts
    agent.write_exports(model.exports())
    # An open session of the agent, opened through another client (the agent's would cancel it
    # as an orphan), holds the queue, so the commit is accepted before the apply starts; the
    # disk is filled in between.
    with server.api(OPERATOR, OPERATOR_SECRET) as operator:
        holder = operator.post(
            "/api/connectors/AD/sessions", json={"agent": "chaos", "mode": "incremental"}
        )
    assert holder.status_code == 201, holder.text
    process = agent.start("incremental", "--api-retry-seconds", "60")
    deadline = time.monotonic() + 60
    while not any(s["state"] == "queued" for s in server.sessions()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the agent's session was never queued"
        time.sleep(0.05)
    filler = fill(small_disk, 256 << 10)  # room to record states, not to apply 12,000 rows
    cancelled = server.post(f"/api/sessions/{holder.json()['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    while "store error" not in server.log.read_text(errors="replace"):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the apply never ran out of room"
        time.sleep(0.05)
    filler.unlink()
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err  # the verdict: done
    assert_store(server, model)


# --- a disk filled by an upload must be reclaimable: cancel, timeout, status, 507 --------


@pytest.fixture
def filled_by_an_upload(
    tmp_path: Path, small_disk: Path
) -> Iterator[tuple[Server, httpx.Client, str]]:
    """A server whose data directory an open session's upload has filled: chunks are sent
    until the server answers 507. Yields the server, an API client and the session id."""
    server = Server(tmp_path / "server", data=small_disk / "data", session_timeout=3)
    server.start()
    try:
        with server.api() as api:
            opened = api.post(
                "/api/connectors/AD/sessions", json={"agent": "filler", "mode": "complete"}
            )
            assert opened.status_code == 201, opened.text
            session_id = opened.json()["id"]
            fill_with_upload(api, session_id)
            yield server, api, session_id
    finally:
        server.stop()


def fill_with_upload(api: httpx.Client, session_id: str) -> None:
    chunk = os.urandom(256 << 10)
    path = f"/api/sessions/{session_id}/files/{ENTRIES}.sorted.csv"
    total = 64 << 20  # more than the disk holds
    start = 0
    while True:
        end = start + len(chunk) - 1
        answer = api.put(
            path, content=chunk, headers={"Content-Range": f"bytes {start}-{end}/{total}"}
        )
        if answer.status_code == 507:
            assert "error" in answer.json(), answer.text
            break
        assert answer.status_code == 200, answer.text
        start = answer.json()["size"]
        # The session is kept active while the disk fills: the worker must not abandon it yet.
    # The write that failed may have left a partial chunk: what the GET reports is the truth.


def assert_reclaimed(server: Server, session_id: str, small_disk: Path) -> None:
    assert not (server.data / "sessions" / session_id).exists()
    assert free_bytes(small_disk) > 8 << 20, free_bytes(small_disk)
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, log


def test_cancel_frees_a_disk_filled_by_an_upload(
    filled_by_an_upload: tuple[Server, httpx.Client, str], small_disk: Path
) -> None:
    server, api, session_id = filled_by_an_upload
    cancelled = api.post(f"/api/sessions/{session_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert_reclaimed(server, session_id, small_disk)
    # And the server works again: a new session opens.
    opened = api.post("/api/connectors/AD/sessions", json={"agent": "next", "mode": "complete"})
    assert opened.status_code == 201, opened.text


def test_the_idle_timeout_frees_a_disk_filled_by_an_upload(
    filled_by_an_upload: tuple[Server, httpx.Client, str], small_disk: Path
) -> None:
    server, api, session_id = filled_by_an_upload
    deadline = time.monotonic() + 30
    while (state := api.get(f"/api/sessions/{session_id}").json())["state"] == "open":
        assert time.monotonic() < deadline, "the idle session was never abandoned"
        time.sleep(0.1)
    assert state["state"] == "cancelled" and "abandoned" in state["reason"], state
    assert_reclaimed(server, session_id, small_disk)


def test_upload_status_answers_on_a_full_disk(
    filled_by_an_upload: tuple[Server, httpx.Client, str],
) -> None:
    server, api, session_id = filled_by_an_upload
    path = f"/api/sessions/{session_id}/files/{ENTRIES}.sorted.csv"
    for _ in range(3):  # more than once: every status request records activity
        status = api.get(path)
        assert status.status_code == 200, status.text
        assert (
            status.json()["size"]
            == (server.data / "sessions" / session_id / status.json()["name"]).stat().st_size
        )
    assert "Traceback" not in server.log.read_text(errors="replace")


def test_every_write_on_a_full_disk_is_a_507_with_a_json_error(
    filled_by_an_upload: tuple[Server, httpx.Client, str], small_disk: Path
) -> None:
    server, api, session_id = filled_by_an_upload
    # Whatever little room the failed chunk left is taken too.
    filler = fill(small_disk, 0)
    try:
        # The connector's agent through another client than the filling session's (the
        # operator's): opening cancels none of its sessions (the same client would cancel the
        # filling one as an orphan, freeing room).
        with server.api(CLIENT, SECRET) as agent:
            for _ in range(3):
                opened = agent.post(
                    "/api/connectors/AD/sessions", json={"agent": "filler", "mode": "incremental"}
                )
                assert opened.status_code == 507, opened.text
                assert "disk" in opened.json()["error"], opened.text
        # The commit of the filling session records its files: no room for that either.
        committed = api.post(f"/api/sessions/{session_id}/commit", json={"files": []})
        assert committed.status_code in (202, 507), committed.text
        if committed.status_code == 507:
            assert "disk" in committed.json()["error"], committed.text
    finally:
        filler.unlink()
    assert "Traceback" not in server.log.read_text(errors="replace")


def test_the_reserve_lets_a_cancel_through_when_nothing_else_frees_room(
    tmp_path: Path, small_disk: Path
) -> None:
    """The disk is full of something else and the session has no file: only the reserve the
    server keeps makes room to record the cancellation; it is made again once there is room."""
    server = Server(tmp_path / "server", data=small_disk / "data")
    server.start()
    reserve = server.data / "disk-reserve"
    try:
        assert reserve.stat().st_size == 1 << 20
        with server.api() as api:
            ids = []
            for agent in ("one", "two", "three"):
                opened = api.post(
                    "/api/connectors/AD/sessions", json={"agent": agent, "mode": "incremental"}
                )
                assert opened.status_code == 201, opened.text
                ids.append(opened.json()["id"])
            filler = fill(small_disk, 0)
            for session_id in ids:
                cancelled = api.post(f"/api/sessions/{session_id}/cancel")
                assert cancelled.status_code == 200, cancelled.text
            assert not reserve.exists()
            filler.unlink()
            deadline = time.monotonic() + 30
            while not reserve.exists():  # the worker makes it again within a round or two
                assert time.monotonic() < deadline, "the reserve was not made again"
                time.sleep(0.05)
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text(errors="replace")


def test_a_full_postgresql_disk_is_a_507_and_cancel_frees_the_files_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PostgreSQL store's disk_full (SQLSTATE 53100) is a full disk too: a write it
    refuses answers 507, and a cancellation still deletes the session's files first."""
    import warnings

    import psycopg.errors
    from serverutil import Api, write_config

    from prepsync.server import create_app
    from prepsync.server.sessions import SessionDatabase

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    def disk_full(*_args: object, **_kwargs: object) -> bool:
        raise psycopg.errors.DiskFull("could not extend file: No space left on device")

    write_config(tmp_path)
    with TestClient(create_app(tmp_path / "config.xml", tmp_path / "data")) as client:
        api = Api(client)
        session_id = api.open("AD", "complete")
        api.upload(session_id, f"{ENTRIES}.sorted.csv", b"objectGUID,dn\n1,a\n")
        monkeypatch.setattr(SessionDatabase, "cancel", disk_full)  # an operator's cancel
        monkeypatch.setattr(SessionDatabase, "cancel_open", disk_full)  # the owner's
        answer = api.post(f"/api/sessions/{session_id}/cancel")
        assert answer.status_code == 507, answer.text
        assert answer.json()["error"].startswith("the server's disk is full"), answer.text
        assert not (tmp_path / "data" / "sessions" / session_id).exists()


def test_a_restart_on_a_full_disk_serves_and_the_timeout_still_frees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session left ``processing`` by a crash is settled at start; on a full disk that write
    fails. The worker must start anyway (it raised, and the server did not start), and its
    rounds must go on to abandon idle sessions (freeing their files) while it waits."""
    import sqlite3
    import uuid

    from prepsync.server.backends import SqliteBackend
    from prepsync.server.sessions import SessionDatabase
    from prepsync.server.worker import Worker

    data = tmp_path / "data"
    uploads = data / "sessions"
    uploads.mkdir(parents=True)
    backend = SqliteBackend(data)
    db = backend.session_database()
    interrupted, idle = str(uuid.uuid4()), str(uuid.uuid4())
    db.open("AD", "agent-1", "complete", interrupted, "agent")
    db.open("HR", "agent-2", "complete", idle, "agent")
    assert db.set_state(interrupted, "open", "processing")
    (uploads / idle).mkdir()
    (uploads / idle / "HR_people.sorted.csv").write_bytes(b"id\n1\n" * 1000)

    def disk_full(*_args: object) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(SessionDatabase, "set_state", disk_full)
    worker = Worker(backend, uploads, {}, session_timeout=0.01, poll=0.01)
    time.sleep(0.05)
    worker.step()
    idle_session = db.get(idle)
    assert idle_session is not None and idle_session.state == "cancelled"
    assert not (uploads / idle).exists()
    still = db.get(interrupted)
    assert still is not None and still.state == "processing"  # settled once there is room
    monkeypatch.undo()
    worker.step()
    settled = db.get(interrupted)
    assert settled is not None and settled.state != "processing"
    worker.stop()
    db.close()
