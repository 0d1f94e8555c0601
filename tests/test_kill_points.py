"""SIGKILL of the agent and of the server at seeded points of an online incremental run; the
rerun must leave the store equal to the harness's own model of the export: nothing lost, nothing
applied twice, no session left waiting, no temporary file left behind. On both stores (SQLite
and PostgreSQL), except the agent's local crash points, which no server sees.

The fast, deterministic share of the soak (``python -m tests.soak``), which kills at random.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from chaos import TABLES, Agent, Comparison, Model, Server, compare, parse_resources
from serverutil import sqlite_only

SEED = 9


@pytest.fixture(scope="module")
def day_one(tmp_path_factory: pytest.TempPathFactory, module_store_url: str | None) -> Path:
    """A server and an agent after a complete run on day 0, day 1's export in place, and the
    store the model expects after day 1 in ``expected.json``; once per store, the PostgreSQL
    store in the module's database."""
    root = tmp_path_factory.mktemp("day-one")
    server = Server(root / "server", database=module_store_url)
    server.start()
    try:
        agent = Agent(root / "agent", server.url)
        model = Model.create(SEED, size=400)
        agent.write_exports(model.exports())
        done = agent.run("complete")
        assert done.returncode == 0, done.stderr
        server.settle()
        assert_store(server, model.expected())
    finally:
        server.stop()
    model.next_day()
    agent.write_exports(model.exports())
    (root / "expected.json").write_text(json.dumps(model.expected()))
    return root


@pytest.fixture
def site(
    day_one: Path,
    module_store_url: str | None,
    store_copy: Callable[[str | None], AbstractContextManager[str | None]],
    tmp_path: Path,
) -> Iterator[tuple[Server, Agent, dict[str, list[tuple]]]]:
    """Day one's site, copied for this test: its data directory, and its database on
    PostgreSQL (the copy of the directory names the same store id, as a restored backup does)."""
    root = tmp_path / "site"
    shutil.copytree(day_one, root, symlinks=True)
    expected = {
        t: [tuple(row) for row in rows]
        for t, rows in json.loads((root / "expected.json").read_text()).items()
    }
    with store_copy(module_store_url) as database:
        server = Server(root / "server", database=database)
        server.start()
        try:
            yield server, Agent(root / "agent", server.url), expected
        finally:
            server.stop()


def assert_store(server: Server, expected: dict[str, list[tuple[str, ...]]]) -> None:
    for table in TABLES:
        assert compare(table, expected[table], server.resources(table)) == Comparison(), table


def assert_recovered(server: Server, agent: Agent, expected: dict[str, list[tuple]]) -> None:
    """Rerun as the scheduler would; then store, baselines and leftovers must be right."""
    rerun = agent.run("incremental")
    assert rerun.returncode == 0, rerun.stderr
    sessions = server.settle()
    assert_store(server, expected)
    assert [s["state"] for s in sessions if s["state"] not in ("done", "cancelled")] == []
    for table in TABLES:
        baseline = (agent.previous / f"{table}.sorted.csv").read_bytes()
        assert parse_resources(baseline)[1] == expected[table], f"baseline of {table}"
    assert agent.leftovers() == []


def agent_killed_at(site: tuple[Server, Agent, dict[str, list[tuple]]], point: str) -> None:
    server, agent, expected = site
    killed = agent.run("incremental", crash_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_recovered(server, agent, expected)


@pytest.mark.parametrize(
    "point",
    [
        "uploaded",  # files on the server, session not committed
        "server-committed",  # server holds the changes, baselines not advanced
    ],
)
def test_agent_killed_around_the_servers_commit(
    site: tuple[Server, Agent, dict[str, list[tuple]]], point: str
) -> None:
    """The server's store settles these: an open orphan is cancelled by the rerun's opening,
    a committed session is applied once whatever the rerun does (both stores)."""
    agent_killed_at(site, point)


@sqlite_only("module_store_url")
@pytest.mark.parametrize(
    "point",
    [
        "staged",  # outputs staged, local commit not written
        "renamed:3",  # mid-way through the outputs' renames
        "baselines-staged",  # the baseline commit not written yet
        "committed:2",  # the baselines' commit written, not carried out
    ],
)
def test_agent_killed_at_a_local_crash_point(
    site: tuple[Server, Agent, dict[str, list[tuple]]], point: str
) -> None:
    """Points of the agent's own journal, with no session open on the server: the store sees
    an ordinary session either way, so one store is enough."""
    agent_killed_at(site, point)


def test_agent_killed_at_seeded_random_moments(
    site: tuple[Server, Agent, dict[str, list[tuple]]],
) -> None:
    server, agent, expected = site
    rng = random.Random(SEED)
    for _ in range(3):  # each kill interrupts a different step; the last run settles them all
        process = agent.start("incremental")
        time.sleep(rng.uniform(0.3, 1.2))  # python start-up takes about 0.3 s
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert_recovered(server, agent, expected)


def test_server_killed_during_the_agents_run(
    site: tuple[Server, Agent, dict[str, list[tuple]]],
) -> None:
    server, agent, expected = site
    process = agent.start("incremental", "--api-retry-seconds", "60")
    time.sleep(random.Random(SEED).uniform(0.4, 0.9))
    server.kill()
    time.sleep(0.3)
    server.start()  # same port: the agent's retries reach it again
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    server.settle()
    assert_store(server, expected)
    assert_recovered(server, agent, expected)
