"""Connections cut or stalled mid-request between agent and server (a TCP proxy on 127.0.0.1):
during the token request, the session opening, the upload and the commit. Each ends in a retry
that completes, or a clean one-line failure whose rerun completes: the store then equals the
model's export, with nothing lost or applied twice, and nothing left behind on either side.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chaos import (
    CLIENT,
    CONNECTOR,
    SECRET,
    TABLES,
    Agent,
    Comparison,
    Fault,
    FaultProxy,
    Model,
    Server,
    assert_clean_failure,
    compare,
)

from prepsync.client import ApiClient, RetryPolicy
from prepsync.request import PrepareRequest
from prepsync.sync import synchronize

TOKEN = r"^POST /connect/token"
OPEN = rf"^POST /api/connectors/{CONNECTOR}/sessions$"
UPLOAD = r"^PUT /api/sessions/[^/]+/files/"
COMMIT = r"^POST /api/sessions/[^/]+/commit$"


@dataclass
class Chain:
    server: Server
    proxy: FaultProxy
    agent: Agent
    model: Model

    def next_day(self) -> None:
        self.model.next_day()
        self.agent.write_exports(self.model.exports())

    def assert_synchronized(self) -> None:
        """Store equals the model; no session waits; the server kept no session files."""
        sessions = self.server.settle()
        expected = self.model.expected()
        for table in TABLES:
            stored = self.server.resources(table)
            assert compare(table, expected[table], stored) == Comparison(), table
        assert [s["state"] for s in sessions if s["state"] not in ("done", "cancelled")] == []
        assert list((self.server.data / "sessions").iterdir()) == []
        assert self.agent.leftovers() == []


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    server = Server(tmp_path / "server")
    server.start()
    proxy = FaultProxy(server.port)
    try:
        agent = Agent(tmp_path / "agent", proxy.url)
        model = Model.create(seed=21, size=300)  # the entries file spans two upload chunks
        agent.write_exports(model.exports())
        done = agent.run("complete")
        assert done.returncode == 0, done.stderr
        yield Chain(server, proxy, agent, model)
    finally:
        proxy.close()
        server.stop()


CASES = {
    "token": [Fault(TOKEN, "refuse"), Fault(TOKEN, "cut-request"), Fault(TOKEN, "lose-answer")],
    "open": [Fault(OPEN, "lose-answer"), Fault(OPEN, "cut-request"), Fault(OPEN, "stall", 1, 0.3)],
    "upload": [
        Fault(UPLOAD, "cut-request", times=2),
        Fault(UPLOAD, "lose-answer"),
        Fault(UPLOAD, "stall", stall=0.3),
    ],
    "commit": [Fault(COMMIT, "lose-answer"), Fault(COMMIT, "cut-request"), Fault(COMMIT, "refuse")],
}


@pytest.mark.parametrize("step", sorted(CASES))
def test_cut_connections_are_retried(chain: Chain, step: str) -> None:
    for fault in CASES[step]:
        chain.next_day()
        chain.proxy.faults = [fault]
        fired = len(chain.proxy.fired)
        done = chain.agent.run("incremental", "--api-retry-seconds", "30")
        assert done.returncode == 0, (fault, done.stderr)
        assert len(chain.proxy.fired) > fired, f"{fault} never happened"
        chain.assert_synchronized()


def test_a_stall_past_the_client_timeout_is_retried(chain: Chain) -> None:
    """The request hangs (no answer, connection kept): the client's timeout ends the wait."""
    chain.next_day()
    chain.proxy.faults = [Fault(COMMIT, "stall", stall=5), Fault(UPLOAD, "stall", stall=5)]
    with ApiClient(
        chain.proxy.url,
        CLIENT,
        SECRET,
        timeout=0.5,
        chunk_size=16 << 10,
        retry=RetryPolicy(total_seconds=20, first_delay=0.05, max_delay=0.2),
    ) as api:
        request = PrepareRequest(
            connector=CONNECTOR,
            mode="incremental",
            sources_dir=chain.agent.sources,
            working_dir=chain.agent.working,
        )
        synchronize(api, request, agent="chaos", tables=None)
    assert [action for _, action in chain.proxy.fired] == ["stall", "stall"]
    chain.assert_synchronized()


def test_a_server_out_of_reach_fails_cleanly_and_the_rerun_completes(chain: Chain) -> None:
    for where in ("unreachable", "mid-upload", "at-commit"):
        chain.next_day()
        baselines = chain.agent.baselines()
        if where == "unreachable":
            chain.proxy.down = True
        else:
            step = UPLOAD if where == "mid-upload" else COMMIT
            chain.proxy.faults = [Fault(step, "refuse", times=1000)]
        failed = chain.agent.run("incremental", "--api-retry-seconds", "1")
        assert_clean_failure(failed)
        assert "gave up" in failed.stderr, where
        assert chain.agent.baselines() == baselines, where  # nothing accepted: nothing moves
        assert chain.agent.leftovers() == []
        chain.proxy.down = False
        chain.proxy.faults = []
        done = chain.agent.run("incremental")  # cancels the failed run's session, then sends
        assert done.returncode == 0, done.stderr
        chain.assert_synchronized()
