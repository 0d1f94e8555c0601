"""The cluster soak: several `prepsync serve` processes share one PostgreSQL database and one
data directory, many connectors are delivered over simulated days, and server processes and
agents are SIGKILLed throughout.

    python -m tests.soak_cluster --days 20 --connectors 8 --seed 1   (or: make soak-cluster)

What it proves: whichever process takes a connector's sessions, and whatever is killed when,
every connector's store equals its export at the end of every day (0 changes lost or doubled),
each connector's sessions apply one at a time in the order they were opened, and no session is
left stuck. The checks are independent of prepsync: the expected rows come from the plain-Python
model of ``chaos.py``, read back through ``GET …/resources``.

- Three servers (``--servers``) on 127.0.0.1, each behind a relay of its own (``chaos``'s
  :class:`FaultProxy`), so the harness sees which request reaches which process.
- Every day, every connector's directory changes (``chaos.Model``) and its agent runs
  (``prepsync prepare --api-url`` against a server picked at random per run), several connectors
  at once. Some days a connector delivers twice in a row, the first run with ``--no-wait``: both
  sessions wait in the queue, and only applying them in opening order yields the day's rows.
- Meanwhile a chaos thread SIGKILLs a server process, then restarts it on its port:
  mid-upload (as a ``PUT …/files/…`` request reaches it), mid-commit (as the agent's
  ``POST …/commit`` reaches it), mid-apply (the process whose database connection holds a
  transaction while a session is ``processing``; counted as mid-database-commit when that
  connection was executing ``COMMIT``), or at a random moment. Agents are SIGKILLed at their
  crash points or at random moments and simply run again, as their scheduler would.
- After every day: every session settled, every connector's store compared with its model.

Exit status 0 only when nothing was lost, doubled or stuck and no intervention was needed.
Without ``--database`` the soak starts a throwaway PostgreSQL cluster (``tests/pgutil.py``).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__:  # run as `python -m tests.soak_cluster`: the helpers are siblings
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import pgutil
import psutil
from chaos import ENTRIES, MEMBERS, Agent, Comparison, FaultProxy, Model, compare
from serverutil import CLIENT, OPERATOR, OPERATOR_SECRET, SECRET, ServerProcess
from soak import AGENT_CRASH_POINTS

SERVER_KILLS = ("mid-upload", "mid-commit", "mid-apply", "random")


def connector_names(count: int) -> list[str]:
    return [f"C{number:02d}" for number in range(count)]


def table_names(connector: str) -> dict[str, str]:
    """The model's two tables as this connector's connection tables."""
    return {ENTRIES: f"{connector}Export_entries", MEMBERS: f"{connector}Export_members"}


def config_xml(connectors: list[str]) -> str:
    """Every connector shaped like ``chaos``'s AD (entries keyed by objectGUID, members keyed by
    both columns), no thresholds, one client allowed on all of them."""
    digest = base64.b64encode(hashlib.sha256(SECRET.encode()).digest()).decode()
    operator = base64.b64encode(hashlib.sha256(OPERATOR_SECRET.encode()).digest()).decode()
    mappings = []
    for connector in connectors:
        tables = table_names(connector)
        mappings.append(
            f"""  <EntityTypeMapping Identifier="{connector}_Entry" Connector="{connector}"
      ConnectionTable="{tables[ENTRIES]}">
    <Property Identifier="objectGUID" ConnectionColumn="objectGUID" IsPrimaryKey="true" />
    <Property Identifier="dn" ConnectionColumn="dn" />
    <Property Identifier="mail" ConnectionColumn="mail" />
  </EntityTypeMapping>
  <EntityAssociationMapping Identifier="{connector}_Entry_member" Connector="{connector}"
      ConnectionTable="{tables[MEMBERS]}" Column1="dn" Column2="member" />"""
        )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ConfigurationFile xmlns="urn:soak-cluster">
{chr(10).join(mappings)}
  <OpenIdClient Identifier="{CLIENT}" HashedSecret="{digest}" Profile="Agent" />
  <OpenIdClient Identifier="{OPERATOR}" HashedSecret="{operator}" Profile="Administrator" />
</ConfigurationFile>
"""


class DatabaseServer(ServerProcess):
    """``prepsync serve --database <url>`` on a data directory other processes share."""

    def __init__(
        self, name: str, config: Path, data: Path, log: Path, database: str | None, timeout: float
    ) -> None:
        super().__init__(config, data, log, session_timeout=timeout)
        self.name = name
        self.database = database

    def command(self) -> list[str]:
        if self.database is None:  # the embedded SQLite store (one process only)
            return super().command()
        return [*super().command(), "--database", self.database]


class KillOrder:
    """A server kill waiting for its moment: the next request matching ``pattern``, on
    whichever server it reaches. Claimed once, by that request or by :meth:`withdraw`."""

    def __init__(self, kind: str, pattern: str) -> None:
        self.kind = kind
        self.pattern = re.compile(pattern)
        self.done = threading.Event()  # set once the server is killed and started again
        self._lock = threading.Lock()
        self._claimed = False

    def claim(self) -> bool:
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def withdraw(self) -> bool:
        """True when nothing fired it (and now nothing will); else waits for its restart."""
        if self.claim():
            return True
        self.done.wait(120)
        return False


class KillingProxy(FaultProxy):
    """The relay in front of server ``number``: given kill orders, it SIGKILLs its server a
    moment after passing on the next request an order matches, so the server dies while
    handling that request (reading the upload chunk, checking the commit's files)."""

    def __init__(
        self, number: int, upstream_port: int, fire: Callable[[int, KillOrder, str], None]
    ) -> None:
        super().__init__(upstream_port)
        self.number = number
        self.orders: list[KillOrder] = []
        self._fire = fire

    def _choose(self, request_line: str) -> Any:
        for order in list(self.orders):
            if order.pattern.search(request_line) and order.claim():
                # The request is relayed right after this returns; a few milliseconds later
                # the server is busy with it.
                threading.Timer(
                    random.uniform(0.001, 0.02), self._fire, (self.number, order, request_line)
                ).start()
                break
        return super()._choose(request_line)


@dataclass
class Report:
    seed: int
    servers: int
    connectors: int
    store: str = "PostgreSQL"
    days: int = 0
    runs: int = 0
    sessions: int = 0
    ordered_pairs: int = 0  # days a connector queued two sessions back to back
    server_kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SERVER_KILLS, 0))
    server_kills_mid_database_commit: int = 0  # of the mid-apply ones: during COMMIT
    server_kills_missed: int = 0  # armed, but nothing matching came before the day ended
    agent_kills_at_crash_points: int = 0
    agent_kills_at_random: int = 0
    agent_kills_missed: int = 0
    failed_runs: int = 0  # runs that should have succeeded and did not (then rerun)
    unclean_failures: int = 0
    lost_rows: int = 0
    extra_rows: int = 0
    doubled_rows: int = 0
    mismatches: list[str] = field(default_factory=list)  # "day N CONNECTOR: …"
    stuck_sessions: int = 0
    interventions: list[str] = field(default_factory=list)
    leftover_files: int = 0
    seconds: float = 0.0

    @property
    def kills(self) -> int:
        return (
            sum(self.server_kills.values())
            + self.agent_kills_at_crash_points
            + self.agent_kills_at_random
        )

    @property
    def clean(self) -> bool:
        return not (
            self.lost_rows
            or self.extra_rows
            or self.doubled_rows
            or self.mismatches
            or self.stuck_sessions
            or self.interventions
            or self.unclean_failures
            or self.leftover_files
        )

    def text(self) -> str:
        kills = ", ".join(f"{kind} {count}" for kind, count in self.server_kills.items())
        return "\n".join(
            [
                f"cluster soak, seed {self.seed}: {self.servers} servers on one {self.store} "
                f"store, {self.connectors} connectors, {self.days} days, {self.runs} agent "
                f"runs, {self.sessions} sessions, {self.seconds:.0f} s",
                f"server kills: {sum(self.server_kills.values())} ({kills}; "
                f"{self.server_kills_mid_database_commit} of the mid-apply ones during COMMIT; "
                f"{self.server_kills_missed} armed but not reached)",
                f"agent kills: {self.agent_kills_at_crash_points} at crash points, "
                f"{self.agent_kills_at_random} at random ({self.agent_kills_missed} too late)",
                f"two sessions queued back to back: {self.ordered_pairs}",
                f"failed runs (rerun by the scheduler): {self.failed_runs}, unclean failures: "
                f"{self.unclean_failures}",
                f"lost rows: {self.lost_rows}, extra rows: {self.extra_rows}, doubled rows: "
                f"{self.doubled_rows}, store differed: {self.mismatches or 'never'}",
                f"stuck sessions: {self.stuck_sessions}, leftover files: {self.leftover_files}",
                f"interventions: {len(self.interventions)}"
                + "".join(f"\n  - {item}" for item in self.interventions),
                "RESULT: " + ("clean" if self.clean else "PROBLEMS FOUND"),
            ]
        )


class ConnectorAgent(Agent):
    """``chaos``'s agent delivering one connector of many, to whichever server it is given."""

    def __init__(self, root: Path, connector: str, url: str) -> None:
        super().__init__(root, url)
        self.connector = connector

    def command(self, mode: str, *extra: str) -> list[str]:
        command = super().command(mode, *extra)
        command[command.index("--connector") + 1] = self.connector
        command[command.index("--agent") + 1] = f"agent-{self.connector}"
        return command

    def write_model(self, model: Model) -> None:
        names = table_names(self.connector)
        self.write_exports({names[table]: data for table, data in model.exports().items()})


class ClusterSoak:
    def __init__(
        self,
        root: Path,
        database: str | None,
        *,
        seed: int,
        servers: int,
        connectors: int,
        rows: int,
        parallel: int,
        session_timeout: float,
        log: bool,
        order_weights: tuple[int, int, int] = (60, 20, 20),
    ) -> None:
        self.root = root
        self.database = database
        self.seed = seed
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.parallel = parallel
        self.session_timeout = session_timeout
        self.log = log
        self.report = Report(seed, servers, connectors, "PostgreSQL" if database else "SQLite")
        self.report_lock = threading.Lock()
        self.connectors = connector_names(connectors)
        config = root / "server.xml"
        config.write_text(config_xml(self.connectors), encoding="utf-8")
        shared = root / "shared-data"  # one data directory for every server process
        self.servers = [
            DatabaseServer(
                f"server{number}",
                config,
                shared,
                root / f"server{number}.log",
                database,
                session_timeout,
            )
            for number in range(servers)
        ]
        self.proxies: list[KillingProxy] = []
        self.server_locks = [threading.Lock() for _ in self.servers]
        # Connector sizes differ (rows, 2x, 3x; the first one 10x): longer applies are easier
        # to catch mid-way.
        self.models = {
            connector: Model.create(
                seed * 1000 + number, size=rows * (10 if number == 0 else 1 + number % 3)
            )
            for number, connector in enumerate(self.connectors)
        }
        self.agents = {
            connector: ConnectorAgent(root / "agents" / connector, connector, "")
            for connector in self.connectors
        }
        self.expected = {connector: model.expected() for connector, model in self.models.items()}
        self.typical_run = 2.0
        self.running: set[subprocess.Popen[str]] = set()
        self.abandoned: set[str] = set()
        self.day_over = threading.Event()
        self.stopping = threading.Event()  # the soak ends early: no agent is run again
        # How often a delivery's first run orders a server kill: none, mid-upload, mid-commit.
        self.order_weights = order_weights

    # --- plumbing ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.log:
            print(text, flush=True)

    def random(self) -> random.Random:
        """A per-call generator seeded from the soak's: threads do not share one."""
        with self.rng_lock:
            return random.Random(self.rng.getrandbits(64))

    def count(self, **increments: int) -> None:
        with self.report_lock:
            for name, value in increments.items():
                setattr(self.report, name, getattr(self.report, name) + value)

    def start(self) -> None:
        for server in self.servers:
            server.start()
            self.proxies.append(KillingProxy(len(self.proxies), server.port, self.fire))

    def kill_agents(self) -> None:
        for process in list(self.running):
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def stop(self) -> None:
        self.stopping.set()
        self.kill_agents()
        for proxy in self.proxies:
            proxy.close()
        for server in self.servers:
            server.stop()

    def live_server(self) -> DatabaseServer:
        for server in self.servers:
            if server.running:
                return server
        raise AssertionError("no server is running")

    def kill_server(self, number: int, kind: str, detail: str = "") -> None:
        """SIGKILL server ``number`` and start it again on its port (as systemd would)."""
        with self.server_locks[number]:
            server = self.servers[number]
            if not server.running:
                return
            server.kill()
            with self.report_lock:
                self.report.server_kills[kind] += 1
            self.say(f"    {server.name} killed {kind} {detail}".rstrip())
            time.sleep(self.random().uniform(0.0, 0.8))
            server.start()

    # --- the chaos thread: server kills during a day ---------------------------------------

    def chaos(self) -> None:
        """Kills at moments no request marks: at random, and of the process applying."""
        rng = self.random()
        while not self.day_over.wait(rng.uniform(0.3, 2.0)):
            if rng.random() < 0.5:
                self.kill_server(rng.randrange(len(self.servers)), "random")
            else:
                self.kill_applying_server()

    @contextlib.contextmanager
    def kill_order(self, kind: str | None) -> Iterator[None]:
        """During the ``with`` block, a server is killed as the next upload chunk
        (``mid-upload``) or commit (``mid-commit``) reaches it, whichever server that is."""
        if kind is None:
            yield
            return
        pattern = {
            "mid-upload": r"^PUT /api/sessions/[^/]+/files/",
            "mid-commit": r"^POST /api/sessions/[^/]+/commit",
        }[kind]
        order = KillOrder(kind, pattern)
        for proxy in self.proxies:
            proxy.orders.append(order)
        try:
            yield
        finally:
            for proxy in self.proxies:
                with contextlib.suppress(ValueError):
                    proxy.orders.remove(order)
            if order.withdraw():
                self.count(server_kills_missed=1)

    def fire(self, number: int, order: KillOrder, request_line: str) -> None:
        try:
            self.kill_server(number, order.kind, f"at {request_line}")
        finally:
            order.done.set()

    def kill_applying_server(self) -> None:
        """Wait for a session to be ``processing``, then kill the server process whose
        database connection holds the longest-running transaction (the worker applying it):
        at once, or (half the time) as that connection executes ``COMMIT``."""
        at_commit = self.database is not None and self.random().random() < 0.5
        while not self.day_over.is_set():
            # PostgreSQL first (cheap), then the API: is a session being applied?
            if (target := self.applying_backend()) is not None and self.processing():
                number, pid, query = target
                if at_commit:
                    query = self.wait_for_commit(pid)
                    if query is None:  # its transaction ended first: try the next one
                        continue
                during_commit = query.strip().upper().startswith("COMMIT")
                if during_commit:
                    self.count(server_kills_mid_database_commit=1)
                self.kill_server(number, "mid-apply", "(during COMMIT)" if during_commit else "")
                return
            time.sleep(0.01)
        self.count(server_kills_missed=1)

    def wait_for_commit(self, pid: int) -> str | None:
        """``COMMIT`` once backend ``pid`` executes it; None if its transaction ends unseen."""
        import psycopg

        assert self.database is not None
        deadline = time.monotonic() + 30
        with psycopg.connect(self.database, autocommit=True, connect_timeout=5) as db:
            while time.monotonic() < deadline and not self.day_over.is_set():
                row = db.execute(
                    "SELECT state, query, xact_start FROM pg_stat_activity WHERE pid = %s",
                    (pid,),
                ).fetchone()
                if row is None or row[2] is None:
                    return None
                if row[0] == "active" and str(row[1]).strip().upper().startswith("COMMIT"):
                    return "COMMIT"
        return None

    def processing(self) -> bool:
        try:
            server = self.live_server()
            return any(
                session["state"] == "processing"
                for connector in self.connectors
                for session in server.sessions(connector)[:3]
            )
        except (httpx.HTTPError, AssertionError):
            return False

    def applying_backend(self) -> tuple[int, int, str] | None:
        """(server number, backend pid, current query) of the connection in the oldest open
        transaction, found through PostgreSQL's own view of its clients; None when none."""
        import psycopg

        if self.database is None:  # SQLite: one server, which is the one applying
            return 0, 0, ""
        try:
            with psycopg.connect(self.database, autocommit=True, connect_timeout=5) as db:
                rows = db.execute(
                    "SELECT client_port, pid, query FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND xact_start IS NOT NULL AND client_port IS NOT NULL"
                    " ORDER BY xact_start"
                ).fetchall()
        except psycopg.Error:
            return None
        for port, pid, query in rows:
            number = self.server_owning_port(port)
            if number is not None:
                return number, int(pid), str(query)
        return None

    def server_owning_port(self, port: int) -> int | None:
        for number, server in enumerate(self.servers):
            process = server.process
            if process is None or process.poll() is not None:
                continue
            try:
                connections = psutil.Process(process.pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            if any(c.laddr and c.laddr.port == port for c in connections):
                return number
        return None

    # --- a connector's day ------------------------------------------------------------------

    def run_agent(
        self,
        connector: str,
        mode: str,
        *extra: str,
        crash_at: str | None = None,
        kill_after: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """One agent run against a server picked at random; ``kill_after`` seconds SIGKILLs it
        (return code -9) if it is still running then."""
        agent = self.agents[connector]
        if self.stopping.is_set():  # as if killed: its delivery gives up
            return subprocess.CompletedProcess([], -signal.SIGKILL, "", "")
        agent.url = self.proxies[self.random().randrange(len(self.proxies))].url
        self.count(runs=1)
        started = time.monotonic()
        process = subprocess.Popen(
            agent.command(mode, "--api-retry-seconds", "120", *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=agent.env(crash_at),
        )
        self.running.add(process)
        try:
            try:
                out, err = process.communicate(timeout=kill_after or 600)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
        finally:
            self.running.discard(process)
        if crash_at is None and kill_after is None and process.returncode == 0:
            self.typical_run = 0.8 * self.typical_run + 0.2 * (time.monotonic() - started)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def killed_run(
        self, connector: str, mode: str, *extra: str
    ) -> subprocess.CompletedProcess[str] | None:
        """One run, perhaps killed on purpose; None when the agent was killed."""
        rng = self.random()
        plan = rng.choices(["none", "crash-point", "random"], weights=[60, 20, 20])[0]
        if plan == "crash-point":
            point = rng.choice(AGENT_CRASH_POINTS)
            done = self.run_agent(connector, mode, *extra, crash_at=point)
            if done.returncode == -signal.SIGKILL:
                self.count(agent_kills_at_crash_points=1)
                self.say(f"    {connector}: agent killed at {point}")
                return None
            return done  # the point is not on this run's path
        if plan == "random":
            after = rng.uniform(0.2, 0.9 * self.typical_run)
            done = self.run_agent(connector, mode, *extra, kill_after=after)
            if done.returncode == -signal.SIGKILL:
                self.count(agent_kills_at_random=1)
                self.say(f"    {connector}: agent killed at a random moment")
                return None
            self.count(agent_kills_missed=1)
            return done
        return self.run_agent(connector, mode, *extra)

    def deliver(self, connector: str, mode: str, *extra: str) -> None:
        """Runs the agent until it succeeds, as a scheduler would; an operator's repair after
        a verdict that is not ``done`` or after 4 failures. The first run may see a server
        killed as its upload or its commit reaches it."""
        rng = self.random()
        kind = rng.choices([None, "mid-upload", "mid-commit"], weights=self.order_weights)[0]
        with self.kill_order(kind):
            done = self.killed_run(connector, mode, *extra)
        tries = 0
        while done is None or done.returncode != 0:
            if done is not None:
                self.count(failed_runs=1)
                if done.returncode == 1 and not _clean_failure(done):
                    self.count(unclean_failures=1)
                self.say(f"    {connector}: run failed ({done.returncode}): {done.stderr[-300:]}")
                if done.returncode in (3, 4):
                    self.repair(connector, f"verdict {done.returncode}: {done.stderr[-200:]}")
                    return
            tries += 1
            if tries > 4:
                self.repair(connector, "the agent did not succeed in 4 reruns")
                return
            if self.stopping.is_set():
                return
            done = self.run_agent(connector, mode, *extra)

    def connector_day(self, connector: str, number: int) -> None:
        model, agent = self.models[connector], self.agents[connector]
        rng = self.random()
        before = dict(model.entries)
        if number:
            model.next_day()
        mode = "complete" if number == 0 or rng.random() < 0.1 else "incremental"
        if number and mode == "incremental" and rng.random() < 0.3:
            # Two sessions queued back to back, the second undoing the first: applied in any
            # other order than opening order, the first one's values are what stays.
            agent.write_model(model)
            self.deliver(connector, "incremental", "--no-wait")
            redo_changes(model, before, rng)
            self.count(ordered_pairs=1)
        agent.write_model(model)
        self.deliver(connector, mode)
        self.expected[connector] = model.expected()

    def repair(self, connector: str, why: str) -> None:
        with self.report_lock:
            self.report.interventions.append(f"{connector}: {why}")
        self.say(f"    INTERVENTION {connector}: {why}")
        server = self.live_server()
        for session in server.sessions(connector):
            if session["state"] in ("open", "queued", "blocked"):
                server.post(f"/api/sessions/{session['id']}/cancel")
        done = self.run_agent(connector, "complete")
        if done.returncode != 0:
            with self.report_lock:
                self.report.interventions.append(f"{connector}: repair failed: {done.stderr}")

    # --- a day ------------------------------------------------------------------------------

    def day(self, number: int) -> None:
        self.say(f"day {number}")
        self.day_over.clear()
        chaos = threading.Thread(target=self.chaos, name="chaos", daemon=True)
        chaos.start()
        pool = concurrent.futures.ThreadPoolExecutor(self.parallel)
        try:
            for future in [
                pool.submit(self.connector_day, connector, number) for connector in self.connectors
            ]:
                future.result()
        except BaseException:
            # Ctrl-C or a failure: the agents still running would be run again and again.
            self.stopping.set()
            self.kill_agents()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.day_over.set()
            chaos.join()
        self.check(number)
        self.report.days = number + 1

    def settle(self, server: DatabaseServer, connector: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.session_timeout + 60
        while True:
            listing = server.sessions(connector)
            if not any(s["state"] in ("queued", "processing") for s in listing):
                return listing
            if time.monotonic() > deadline:
                states = Counter(s["state"] for s in listing)
                raise AssertionError(f"{connector}: sessions not settled: {dict(states)}")
            time.sleep(0.05)

    def check(self, number: int) -> None:
        server = self.live_server()
        sessions = 0
        for connector in self.connectors:
            try:
                listing = self.settle(server, connector)
            except AssertionError as stuck:
                self.count(stuck_sessions=1)
                self.repair(connector, f"day {number}: {stuck}")
                listing = self.settle(server, connector)
            sessions += len(listing)
            for session in listing:
                reason = session.get("reason") or ""
                abandoned = session["state"] == "cancelled" and "abandoned" in reason
                if abandoned and session["id"] not in self.abandoned:
                    self.abandoned.add(session["id"])
                    self.count(stuck_sessions=1)
                    self.say(f"    {connector}: session {session['id']} abandoned: {reason}")
            differed = Comparison()
            for table, name in table_names(connector).items():
                result = compare(
                    table, self.expected[connector][table], server.resources(name, connector)
                )
                differed.lost += result.lost
                differed.extra += result.extra
                differed.doubled += result.doubled
            if not differed.equal:
                self.count(
                    lost_rows=differed.lost,
                    extra_rows=differed.extra,
                    doubled_rows=differed.doubled,
                )
                self.report.mismatches.append(f"day {number} {connector}: {differed}")
                self.say(f"    STORE DIFFERS {connector}: {differed}")
                self.repair(connector, f"day {number}: store differs ({differed})")
            stray = self.agents[connector].leftovers()
            if stray:
                self.count(leftover_files=len(stray))
        self.report.sessions = sessions


def redo_changes(model: Model, before: dict[str, tuple[str, str, str]], rng: random.Random) -> None:
    """The next change of every entry the model changed or inserted since ``before``, and two of
    the ones it deleted inserted again: the incremental after this one touches the same keys."""
    for guid, row in list(model.entries.items()):
        if before.get(guid) != row:
            model.entries[guid] = (guid, row[1], f"redone-{rng.getrandbits(24):x}")
    deleted = sorted(set(before) - set(model.entries))
    for guid in rng.sample(deleted, min(2, len(deleted))):
        model.entries[guid] = (*before[guid][:2], f"back-{rng.getrandbits(24):x}")


def _clean_failure(done: subprocess.CompletedProcess[str]) -> bool:
    return (
        done.returncode == 1
        and "Traceback" not in done.stderr
        and done.stderr.startswith("error: ")
        and done.stderr.count("\n") == 1
    )


@contextlib.contextmanager
def _database(url: str | None) -> Iterator[str | None]:
    """``url`` as given, or a fresh database on a throwaway cluster (or the server of
    ``PREPSYNC_TEST_DATABASE_URL``), dropped after; "sqlite" is None, the embedded store."""
    if url == "sqlite":
        yield None
        return
    if url:
        yield url
        return
    with pgutil.admin_url() as admin:
        databases = pgutil.Databases(admin, prefix="prepsync_soak")
        with databases.database() as fresh:
            yield fresh


def run_cluster_soak(
    days: int,
    seed: int,
    *,
    database: str | None = None,
    servers: int = 3,
    connectors: int = 6,
    rows: int = 300,
    parallel: int = 3,
    session_timeout: float = 60.0,
    max_minutes: float = 120.0,
    keep: bool = False,
    log: bool = True,
    order_weights: tuple[int, int, int] = (60, 20, 20),
) -> Report:
    root = Path(tempfile.mkdtemp(prefix="prepsync-soak-cluster-"))
    started = time.monotonic()
    with _database(database) as url:
        soak = ClusterSoak(
            root,
            url,
            seed=seed,
            servers=servers,
            connectors=connectors,
            rows=rows,
            parallel=parallel,
            session_timeout=session_timeout,
            log=log,
            order_weights=order_weights,
        )
        try:
            soak.start()
            for number in range(days):
                if time.monotonic() > started + max_minutes * 60:
                    soak.say(f"stopping: --max-minutes {max_minutes:g} reached")
                    break
                soak.day(number)
        finally:
            soak.stop()
            if keep:
                soak.say(f"kept {root}")
            else:
                import shutil

                shutil.rmtree(root, ignore_errors=True)
    soak.report.seconds = time.monotonic() - started
    return soak.report


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak_cluster", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--servers", type=int, default=3, help="server processes")
    parser.add_argument("--connectors", type=int, default=6)
    parser.add_argument("--rows", type=int, default=300, help="entries of the smallest connector")
    parser.add_argument("--parallel", type=int, default=3, help="agents running at once")
    parser.add_argument(
        "--database",
        help="postgresql:// URL of an empty database (default: a throwaway cluster's); "
        "'sqlite' runs the embedded store, with --servers 1 (a check of the harness itself)",
    )
    parser.add_argument("--session-timeout", type=float, default=60.0)
    parser.add_argument("--max-minutes", type=float, default=120.0, help="stop after this long")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    options = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_cluster_soak(
            options.days,
            options.seed,
            database=options.database,
            servers=options.servers,
            connectors=options.connectors,
            rows=options.rows,
            parallel=options.parallel,
            session_timeout=options.session_timeout,
            max_minutes=options.max_minutes,
            keep=options.keep,
        )
    except pgutil.PostgresUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: everything started is stopped by now
        print("soak interrupted", file=sys.stderr)
        return 130
    print(report.text())
    if options.json:
        document = {**asdict(report), "kills": report.kills, "clean": report.clean}
        options.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
