"""One session's commit, chunks and cancel sent to two `prepsync serve` processes at once.

Each race is made deterministic: the test holds the session's row (``SELECT ... FOR UPDATE``),
so the first process stops inside its commit, at its first write to that row (the activity mark
before hashing the files); the competing request then goes to the second process, and the row is
let go only once that request has been answered or waits on a lock in the database. Before the
processes locked the session across each other, the second commit answered 409 instead of the
session's state, the chunk was written after the check and the commit found a hash that
differed (422), and the cancel discarded the files under the commit's hashing (422).

Also here: ``/healthz`` answers 503 while the sessions table does not answer (it hung with the
event loop before its query went to a thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from serverutil import Api, ServerProcess, csv_bytes, write_config

pytestmark = pytest.mark.postgres

ENTRIES = "ADExport_entries.sorted.csv"
MEMBERS = "ADExport_members.sorted.csv"
FILES = {
    ENTRIES: csv_bytes(["objectGUID", "dn"], [(f"{n:06d}", f"cn=u{n}") for n in range(500)]),
    MEMBERS: csv_bytes(["dn", "member"], []),
}


class Pair:
    """Two server processes on one database and one data directory, driven as one agent."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        config = write_config(tmp_path)
        data = tmp_path / "data"
        self.url = url
        self.data = data
        self.first = ServerProcess(config, data, tmp_path / "first.log", database=url)
        self.second = ServerProcess(config, data, tmp_path / "second.log", database=url)
        self.first.start()
        self.second.start()
        self.first_http = httpx.Client(base_url=self.first.url, timeout=60)
        self.second_http = httpx.Client(base_url=self.second.url, timeout=60)
        self.a = Api(self.first_http)
        self.b = Api(self.second_http)
        self.b._token = self.a.token()  # one data directory: one token key for both

    def close(self) -> None:
        self.first_http.close()
        self.second_http.close()
        self.first.stop()
        self.second.stop()

    def uploaded_session(self) -> str:
        session_id = self.a.open("AD", "complete")
        for name, data in FILES.items():
            self.a.upload(session_id, name, data)
        return session_id

    def lock_waiters(self) -> int:
        """The server processes' database connections waiting for a lock."""
        with psycopg.connect(self.url, autocommit=True) as connection:
            row = connection.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'prepsync' AND wait_event_type = 'Lock'"
            ).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[Pair]:
    servers = Pair(tmp_path, postgres_url)
    try:
        yield servers
    finally:
        servers.close()


class Call(threading.Thread):
    """A request sent from a thread, so the test can hold the database meanwhile."""

    def __init__(self, send: Callable[[], httpx.Response]) -> None:
        super().__init__(daemon=True)
        self.send = send
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.response = self.send()
        except BaseException as error:  # reported by answer()
            self.error = error

    def answer(self) -> httpx.Response:
        self.join(60)
        assert not self.is_alive(), "no answer within 60 s"
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.01)


def hold_row(url: str, session_id: str) -> psycopg.Connection[tuple[object, ...]]:
    """The session's row locked by the test until it rolls back: a commit stops at its UPDATE."""
    gate = psycopg.connect(url)
    gate.execute("SELECT 1 FROM prepsync.sessions WHERE id = %s FOR UPDATE", (session_id,))
    return gate


def during_a_commit(
    pair: Pair,
    session_id: str,
    files: dict[str, bytes],
    other: Callable[[], httpx.Response],
    what: str,
) -> tuple[httpx.Response, httpx.Response]:
    """Commits the session on the first process and, once that commit waits for the session's
    row (held by the test), sends ``other``; lets both go once ``other`` is answered or
    waiting too. The commit's answer and ``other``'s."""
    gate = hold_row(pair.url, session_id)
    try:
        commit = Call(lambda: pair.a.commit(session_id, files))
        wait_until(lambda: pair.lock_waiters() >= 1, "the commit inside")
        call = Call(other)
        wait_until(
            lambda: not call.is_alive() or pair.lock_waiters() >= 2,
            f"the {what} answered or waiting",
        )
    finally:
        gate.rollback()
        gate.close()
    return commit.answer(), call.answer()


def test_two_commits_of_one_session_on_two_processes_give_one_commit(pair: Pair) -> None:
    session_id = pair.uploaded_session()
    gate = hold_row(pair.url, session_id)
    try:
        first = Call(lambda: pair.a.commit(session_id, FILES))
        second = Call(lambda: pair.b.commit(session_id, FILES))
        # Both inside: one waits for the row, the other for it or for the first's commit.
        wait_until(lambda: pair.lock_waiters() >= 2, "both commits inside")
    finally:
        gate.rollback()
        gate.close()
    answers = sorted([first.answer(), second.answer()], key=lambda r: r.status_code)
    # One queues the session; the other is a repeated commit: harmless, it returns the state.
    assert [answer.status_code for answer in answers] == [200, 202], [a.text for a in answers]
    assert answers[0].json()["state"] in ("queued", "processing", "done")
    assert pair.a.wait(session_id, timeout=60)["state"] == "done"


def test_a_chunk_sent_to_another_process_during_a_commit_is_refused(pair: Pair) -> None:
    session_id = pair.uploaded_session()
    altered = FILES[ENTRIES].replace(b"cn=u1", b"cn=X1")
    committed, refused = during_a_commit(
        pair,
        session_id,
        FILES,
        lambda: pair.b.put_chunk(session_id, ENTRIES, altered, 0, len(altered)),
        "chunk",
    )
    assert committed.status_code == 202
    assert refused.status_code == 409, refused.text
    assert pair.a.wait(session_id, timeout=60)["state"] == "done"
    # What the worker applied is what the commit verified, not the refused chunk.
    assert pair.a.resources("AD", "ADExport_entries") == FILES[ENTRIES]


def test_a_cancel_sent_to_another_process_during_a_commit_has_one_outcome(pair: Pair) -> None:
    session_id = pair.uploaded_session()
    committed, cancelled = during_a_commit(
        pair, session_id, FILES, lambda: pair.b.post(f"/api/sessions/{session_id}/cancel"), "cancel"
    )
    # The commit was first: the session is queued with its files, and the agent's own cancel of
    # a committed session is an operator's (403).
    assert (committed.status_code, cancelled.status_code) == (202, 403), cancelled.text
    assert pair.a.wait(session_id, timeout=60)["state"] == "done"


def test_a_complete_session_opened_on_another_process_during_a_commit_has_one_outcome(
    pair: Pair,
) -> None:
    """A complete session supersedes the connector's sessions not yet applied, on whichever
    process it opens: there it must wait for a commit of one of them running on another
    process, not cancel it and discard its files under the commit's hashing (the commit then
    answered 422, a file "not uploaded", to an agent whose files had all arrived)."""
    # Big enough that hashing it outlasts the opening's cancel and discard by far.
    big = csv_bytes(["objectGUID", "dn"], [(f"{n:08d}", f"cn=u{n}" * 8) for n in range(300_000)])
    files = {ENTRIES: big, MEMBERS: FILES[MEMBERS]}
    session_id = pair.a.open("AD", "complete")
    for name, data in files.items():
        pair.a.upload(session_id, name, data)
    committed, complete = during_a_commit(
        pair,
        session_id,
        files,
        lambda: pair.b.post(
            "/api/connectors/AD/sessions", json={"agent": "agent-2", "mode": "complete"}
        ),
        "opening",
    )
    assert complete.status_code == 201, complete.text
    # Either the commit went first (queued, then superseded by the complete session, or
    # applied if the worker took it before) or the cancellation did (409): never a 422.
    assert committed.status_code in (202, 409), committed.text
    final = pair.a.wait(session_id, timeout=60)["state"]
    if committed.status_code == 202:
        assert final in ("cancelled", "done"), final
    else:
        assert final == "cancelled"
    assert pair.a.wait(complete.json()["id"], frozenset({"open"}))["state"] == "open"


def test_healthz_answers_503_while_the_sessions_table_does_not_answer(pair: Pair) -> None:
    gate = psycopg.connect(pair.url)
    gate.execute("LOCK TABLE prepsync.sessions IN ACCESS EXCLUSIVE MODE")
    try:
        with httpx.Client(base_url=pair.first.url, timeout=20) as http:
            answer = http.get("/healthz")
            assert answer.status_code == 503, answer.text
            assert answer.json()["sessions"].startswith("no answer within")
    finally:
        gate.rollback()
        gate.close()
    with httpx.Client(base_url=pair.first.url, timeout=20) as http:
        assert http.get("/healthz").status_code == 200
