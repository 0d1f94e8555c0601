"""The soak: simulated days of exports synchronized online while agent and server are killed.

    python -m tests.soak --days 30 --seed 7          (or: make soak DAYS=30 SEED=7)

Each day the harness's model of a directory changes (inserts, updates, deletes; now and then a
table emptied or shrunk by two thirds), the export is written with shuffled rows, a duplicate
key and a null key, and `prepsync prepare --api-url` runs against `prepsync serve`, both real
processes on 127.0.0.1. Most days something goes wrong on purpose:

- the agent is SIGKILLed at a named crash point, or at a random moment;
- the server is SIGKILLed at a random moment of the agent's run, or while it applies a session
  (then restarted on the same port: the agent's retries reach it again);
- the export is bad (unterminated quote, wrong field count, invalid UTF-8, CR-only line ends,
  UTF-16 without a BOM, a ``#TYPE`` first line): the run must fail in one clean line, change
  nothing;
- the export is a connector's change file (``--change-files``, a share of the days): only the
  day's changes, with a command column in any spelling; the agent is mostly killed right after
  the server accepted its commit (at its crash point just after the commit's answer, or as soon
  as the server shows the session committed, wherever the agent then is), and the rerun on the
  same export must deliver nothing again;
- the server's data directory (on a small tmpfs, when root can mount one) fills up at a random
  moment of the run and is freed a little later; now and then the agent's retry budget is
  shorter than that, so it gives up in one line and its rerun must complete;
- the wall clock of the server, the agent or both jumps by seconds to days, either way, and
  stays wrong (``clockjump.py`` shifts ``time.time()`` in their processes).

After a kill, the agent is simply run again, as its scheduler would. After every day the
server's store (``GET …/tables/{t}/resources``) is compared with the model, which is plain
Python data that shares no code with prepsync. Whatever an operator would have had to do is
counted as an intervention (a complete synchronization to repair the store, a session to
cancel or force); sessions the server had to abandon after ``--session-timeout`` are counted
as stuck (unless a forward jump of the server's clock past the session timeout explains it).
A day's export committed in more than one session is a doubled delivery. The report gives days,
runs, kills, disk-fulls, clock jumps, lost, extra and doubled rows, doubled deliveries, stuck
sessions and interventions; the exit status is 0 only when nothing was lost, doubled or stuck
and no intervention was needed.

With ``--database`` (a PostgreSQL URL, or ``auto`` for a throwaway cluster) the server keeps its
store there, and ``--servers N`` runs N server processes on that database and one data
directory: each agent run talks to one of them at random, and each server kill takes one at
random (the applying one or another), so a session a killed process was applying is taken over
by another process's worker.

    python -m tests.soak --days 60 --database auto --servers 3

The soak stops by itself (after the days, or at ``--max-minutes``), uses only 127.0.0.1, and
removes its processes and its temporary directory (``--keep`` keeps the directory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__:  # run as `python -m tests.soak`: the helpers are siblings, not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos import (
    ENTRIES,
    TABLES,
    Agent,
    Comparison,
    Model,
    MountRefused,
    Server,
    compare,
    fill,
    tmpfs,
)
from clockjump import write_offset

AGENT_CRASH_POINTS = [
    "staged",  # outputs staged, not committed locally
    "committed:1",  # outputs' local commit written
    "renamed:2",  # mid-way through the outputs' renames
    "uploaded",  # files on the server, session not committed
    "server-committed",  # the server holds the changes, the baselines did not move
    "baselines-staged",  # new baselines staged, not committed
    "committed:2",  # baselines' local commit written, not renamed
]
BAD_INPUTS = ["unterminated quote", "field count", "invalid UTF-8", "CR-only", "UTF-16", "#TYPE"]


def bad_export(good: bytes, kind: str, separator: str) -> bytes:
    """The export spoiled in a way prepsync must refuse (a one-line error, exit 1)."""
    sep = separator.encode()
    if kind == "unterminated quote":
        return good + sep.join([b"zz-guid", b'"never closed', b"x", b"y\n"])
    if kind == "field count":
        return good + sep.join([b"zz-guid", b"one", b"two", b"three", b"four", b"five\n"])
    if kind == "invalid UTF-8":
        return good + sep.join([b"zz-guid", b"\xff\xfe bad", b"x", b"y\n"])
    if kind == "CR-only":
        return good.replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    if kind == "UTF-16":
        # Without its byte-order mark: a file with one is read as UTF-16 (issue 15), one
        # without must be refused, naming the encoding to give with --encoding.
        return good.decode("utf-8").encode("utf-16-le")
    assert kind == "#TYPE"
    return b"#TYPE System.Management.Automation.PSCustomObject\n" + good


@dataclass
class Report:
    seed: int
    store: str = "sqlite"  # or "postgresql": then ``servers`` processes share the queue
    servers: int = 1
    days: int = 0
    runs: int = 0
    agent_kills_at_crash_points: int = 0
    agent_kills_at_random: int = 0
    server_kills_at_random: int = 0
    server_kills_mid_apply: int = 0
    server_kills_mid_apply_missed: int = 0  # the apply was over before the kill
    agent_kills_missed: int = 0  # the agent had finished before its random moment
    change_file_days: int = 0  # incremental days whose export is a connector's change file
    agent_kills_after_commit_on_change_files: int = 0  # of agent_kills_at_crash_points
    disk_fulls: int = 0  # the server's data directory filled during a run, then freed
    disk_full_give_ups: int = 0  # runs that gave up on the full disk (then rerun)
    disk_full: str = "on"  # or why the soak could not fill a disk (no tmpfs)
    clock_jumps: int = 0  # the server's or the agent's wall clock jumped during a run
    abandoned_after_clock_jump: int = 0  # sessions abandoned by a forward jump past the timeout
    doubled_deliveries: int = 0  # a day's export committed in more than one session
    bad_inputs_refused: int = 0
    bad_inputs_accepted: int = 0  # a bad export the agent took as good
    unclean_failures: int = 0  # exit 1 without exactly one `error:` line, or a traceback
    failed_runs: int = 0  # runs that should have succeeded and did not (then rerun)
    lost_rows: int = 0
    extra_rows: int = 0
    doubled_rows: int = 0
    mismatched_days: list[int] = field(default_factory=list)
    stuck_sessions: int = 0  # abandoned by the server after --session-timeout
    interventions: list[str] = field(default_factory=list)
    leftover_files: int = 0
    seconds: float = 0.0

    @property
    def kills(self) -> int:
        return (
            self.agent_kills_at_crash_points
            + self.agent_kills_at_random
            + self.server_kills_at_random
            + self.server_kills_mid_apply
        )

    @property
    def clean(self) -> bool:
        return not (
            self.lost_rows
            or self.extra_rows
            or self.doubled_rows
            or self.stuck_sessions
            or self.interventions
            or self.bad_inputs_accepted
            or self.unclean_failures
            or self.leftover_files
            or self.doubled_deliveries
        )

    def text(self) -> str:
        return "\n".join(
            [
                f"soak, seed {self.seed}: {self.days} days, {self.runs} agent runs, "
                f"{self.seconds:.0f} s, store {self.store}, {self.servers} server process"
                + ("es" if self.servers > 1 else ""),
                f"kills: {self.kills} (agent at crash points {self.agent_kills_at_crash_points}, "
                f"agent at random {self.agent_kills_at_random}, server at random "
                f"{self.server_kills_at_random}, server mid-apply {self.server_kills_mid_apply}"
                f"; too late: {self.agent_kills_missed} agent, "
                f"{self.server_kills_mid_apply_missed} mid-apply)",
                f"change-file days: {self.change_file_days} (agent killed right after the "
                f"server's commit: {self.agent_kills_after_commit_on_change_files}); "
                f"doubled deliveries: {self.doubled_deliveries}",
                f"server disk full: {self.disk_fulls} times ({self.disk_full_give_ups} runs "
                f"gave up and were rerun)"
                + ("" if self.disk_full == "on" else f" - not run: {self.disk_full}"),
                f"clock jumps: {self.clock_jumps} (sessions abandoned by a forward jump past "
                f"the session timeout: {self.abandoned_after_clock_jump})",
                f"bad exports: {self.bad_inputs_refused} refused in one line, "
                f"{self.bad_inputs_accepted} accepted; unclean failures: {self.unclean_failures}",
                f"failed runs (rerun by the scheduler): {self.failed_runs}",
                f"lost rows: {self.lost_rows}, extra rows: {self.extra_rows}, doubled rows: "
                f"{self.doubled_rows}, days the store differed: {self.mismatched_days or 'none'}",
                f"stuck sessions: {self.stuck_sessions}, leftover files: {self.leftover_files}",
                f"interventions: {len(self.interventions)}"
                + "".join(f"\n  - {item}" for item in self.interventions),
                "RESULT: " + ("clean" if self.clean else "PROBLEMS FOUND"),
            ]
        )


class Soak:
    def __init__(
        self,
        root: Path,
        seed: int,
        rows: int,
        session_timeout: float,
        separator: str,
        log: bool,
        disk: Path | None = None,
        change_files: float = 0.3,
        plan: str | None = None,
        database: str | None = None,
        servers: int = 1,
    ) -> None:
        self.rng = random.Random(seed)
        self.plan = plan  # every day's plan after the first, where it applies (tests)
        self.change_files = change_files  # the share of days whose export is a change file
        self.report = Report(seed)
        # The wall clocks of server and agent, shifted by the seconds in these files.
        self.server_clock, self.agent_clock = root / "server-clock", root / "agent-clock"
        self.clock_offsets = {self.server_clock: 0.0, self.agent_clock: 0.0}
        # On a small file system when one could be mounted, so that it can be filled.
        self.disk = disk
        # With PostgreSQL, several server processes share its queue and one data directory: each
        # run of the agent goes to one of them at random, and a kill takes one at random.
        assert servers == 1 or database is not None, "several servers need PostgreSQL"
        self.servers: list[Server] = []
        for number in range(servers):
            shared = self.servers[0].data if self.servers else None
            self.servers.append(
                Server(
                    root / ("server" if number == 0 else f"server-{number}"),
                    data=shared or (None if disk is None else disk / "data"),
                    session_timeout=session_timeout,
                    store_retry_delay=0.5,  # after a store error (a full disk): retry soon
                    clock=self.server_clock,
                    database=database,
                )
            )
        # The operator's view (sessions, resources): the first process; all share one store.
        self.server = self.servers[0]
        self.report.store = "sqlite" if database is None else "postgresql"
        self.report.servers = servers
        self.agent = Agent(root / "agent", self.server.url, separator, clock=self.agent_clock)
        self.model = Model.create(seed, size=rows)
        self.separator = separator
        self.session_timeout = session_timeout
        self.log = log
        self.expected = self.model.expected()
        self.typical_run = 1.5  # seconds of an undisturbed run; measured as days go by
        self.running: subprocess.Popen[str] | None = None
        self.abandoned: set[str] = set()  # sessions already counted as stuck
        # The model as of the last export delivered (the store's rows), for change files.
        self.delivered: tuple[dict[str, tuple[str, str, str]], set[tuple[str, str]]] | None = None
        # After a change-file day the agent's baselines are older than the store: the next
        # full extract must be a complete synchronization (as when a connector changes kind).
        self.baselines_stale = False
        self.known: set[str] = set()  # sessions of the days before
        self.repair_sessions: set[str] = set()  # opened by repair runs: not the day's delivery
        self.jumped_forward = False  # a jump past the session timeout today

    def say(self, text: str) -> None:
        if self.log:
            print(text, flush=True)

    # --- one agent run, with or without a kill ----------------------------------------------

    def pick_server(self) -> Server:
        """The process a run talks to, or a kill takes (the one there is, with SQLite)."""
        return self.servers[0] if len(self.servers) == 1 else self.rng.choice(self.servers)

    def run_agent(self, mode: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
        self.report.runs += 1
        self.agent.url = self.pick_server().url
        started = time.monotonic()
        done = self.agent.run(mode, "--api-retry-seconds", "120", crash_at=crash_at, timeout=600)
        if crash_at is None and done.returncode == 0:
            self.typical_run = 0.8 * self.typical_run + 0.2 * (time.monotonic() - started)
        return done

    def start_agent(self, mode: str) -> subprocess.Popen[str]:
        self.report.runs += 1
        self.agent.url = self.pick_server().url
        self.running = self.agent.start(mode, "--api-retry-seconds", "120")
        return self.running

    def finish(self, process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
        out, err = process.communicate(timeout=600)
        self.running = None
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def restart_server(self) -> None:
        victim = self.pick_server()
        victim.kill()
        time.sleep(self.rng.uniform(0.0, 1.0))
        victim.start()

    def kill_server_mid_apply(self, mode: str) -> subprocess.CompletedProcess[str]:
        known = {s["id"] for s in self.server.sessions()}
        process = self.start_agent(mode)
        while process.poll() is None:
            fresh = [s for s in self.server.sessions() if s["id"] not in known]
            if any(s["state"] == "processing" for s in fresh):
                # With several processes, not always the one applying: the others go on.
                victim = self.pick_server()
                victim.kill()
                self.report.server_kills_mid_apply += 1
                self.say("    server killed while applying")
                time.sleep(self.rng.uniform(0.0, 0.5))
                victim.start()
                return self.finish(process)
            if any(s["state"] == "done" for s in fresh):
                break
            time.sleep(0.003)
        self.report.server_kills_mid_apply_missed += 1
        self.say("    the apply was over before the server could be killed")
        return self.finish(process)

    def attempt(self, mode: str, plan: str) -> subprocess.CompletedProcess[str] | None:
        """One run of the agent under ``plan``; None when the agent itself was killed."""
        if plan == "agent-crash-point":
            point = self.rng.choice(AGENT_CRASH_POINTS)
            done = self.run_agent(mode, crash_at=point)
            if done.returncode == -signal.SIGKILL:
                self.report.agent_kills_at_crash_points += 1
                self.say(f"    agent killed at {point}")
                return None
            return done  # the point is not on this run's path (e.g. a change-free table)
        if plan == "agent-random":
            process = self.start_agent(mode)
            time.sleep(self.rng.uniform(0.2, 0.9 * self.typical_run))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                self.finish(process)
                self.report.agent_kills_at_random += 1
                self.say("    agent killed at a random moment")
                return None
            self.report.agent_kills_missed += 1
            return self.finish(process)
        if plan == "server-random":
            process = self.start_agent(mode)
            time.sleep(self.rng.uniform(0.2, 1.3 * self.typical_run))
            self.restart_server()
            self.report.server_kills_at_random += 1
            self.say("    server killed at a random moment")
            return self.finish(process)
        if plan == "server-mid-apply":
            return self.kill_server_mid_apply(mode)
        if plan == "agent-once-committed":
            return self.kill_agent_once_committed(mode)
        if plan == "agent-after-commit":
            done = self.run_agent(mode, crash_at="server-committed")
            if done.returncode == -signal.SIGKILL:
                self.report.agent_kills_at_crash_points += 1
                self.report.agent_kills_after_commit_on_change_files += 1
                self.say("    agent killed right after the server's commit")
                return None
            return done
        if plan == "disk-full":
            return self.disk_full(mode)
        if plan == "clock-jump":
            return self.clock_jump(mode)
        return self.run_agent(mode)

    def kill_agent_once_committed(self, mode: str) -> subprocess.CompletedProcess[str] | None:
        """SIGKILL the agent as soon as the server holds its commit (its session left
        ``open``): wherever the agent then is - advancing its baselines, waiting for the
        verdict - a rerun on the same export must not deliver it again."""
        known = {s["id"] for s in self.server.sessions()}
        process = self.start_agent(mode)
        while process.poll() is None:
            fresh = [s for s in self.server.sessions() if s["id"] not in known]
            if any(s["state"] != "open" for s in fresh):
                process.send_signal(signal.SIGKILL)
                self.finish(process)
                self.report.agent_kills_at_random += 1
                self.report.agent_kills_after_commit_on_change_files += 1
                self.say("    agent killed once the server held its commit")
                return None
            time.sleep(0.003)
        self.report.agent_kills_missed += 1
        return self.finish(process)

    def disk_full(self, mode: str) -> subprocess.CompletedProcess[str] | None:
        """The server's data directory fills at a random moment of the run (almost no room
        left, or none), stays full a while, then is freed; one time in three the agent's retry
        budget is shorter than that, so it gives up (one clean line saying the server's disk
        is full) and the scheduler's rerun must complete."""
        assert self.disk is not None
        give_up = self.rng.random() < 1 / 3
        extra = ("--api-retry-seconds", "2") if give_up else ("--api-retry-seconds", "120")
        self.report.runs += 1
        process = self.running = self.agent.start(mode, *extra)
        time.sleep(self.rng.uniform(0.0, 0.8 * self.typical_run))
        filler = fill(self.disk, self.rng.choice([0, 16 << 10, 256 << 10]))
        self.report.disk_fulls += 1
        try:
            if give_up:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=60)
            else:
                time.sleep(self.rng.uniform(0.5, 3.0))
        finally:
            filler.unlink()
        self.say("    the server's disk filled, then was freed")
        done = self.finish(process)
        if done.returncode == 1 and "the server's disk is full" in done.stderr:
            self.report.disk_full_give_ups += 1
            if not self.clean_failure(done):
                self.report.unclean_failures += 1
            self.say(f"    gave up: {done.stderr.strip()[-200:]}")
            return None  # like a kill: the scheduler reruns
        return done

    def clock_jump(self, mode: str) -> subprocess.CompletedProcess[str]:
        """The wall clock of the server, the agent or both jumps at a random moment of the
        run, by seconds to days, either way (NTP, a restored VM); it stays wrong afterwards."""
        process = self.start_agent(mode)
        time.sleep(self.rng.uniform(0.1, 0.9 * self.typical_run))
        jump = self.rng.choice([-86400, -7200, -90, -30, 30, 90, 7200, 86400])
        whose = self.rng.choice(["server", "agent", "both"])
        for clock in (self.server_clock, self.agent_clock):
            if whose == "both" or (clock == self.server_clock) == (whose == "server"):
                self.clock_offsets[clock] += jump
                write_offset(clock, self.clock_offsets[clock])
        if whose != "agent" and jump >= self.session_timeout:
            self.jumped_forward = True
        self.report.clock_jumps += 1
        self.say(f"    the {whose}'s clock jumped {jump:+d} s")
        return self.finish(process)

    # --- a day ------------------------------------------------------------------------------

    def day(self, number: int) -> None:
        report = self.report
        # A connector's change file holds what changed since the export last delivered (a day
        # whose export was refused delivered nothing: its changes come with the next file).
        before = self.delivered if self.delivered is not None else self.model.snapshot()
        what = self.model.next_day() if number else "first load"
        self.jumped_forward = False
        change_file = number > 0 and self.rng.random() < self.change_files
        if change_file:
            # A connector that writes change files: only what changed since yesterday, with
            # a command column. Kills right after the server's commit are the point (a rerun
            # on the same export must not deliver it again).
            exports = self.model.change_exports(before, self.separator)
            mode = "incremental"
            report.change_file_days += 1
            plans = ["none", "agent-after-commit", "agent-once-committed", "agent-random"]
            plans += ["server-random"]
            weights = [20, 25, 25, 15, 15]
            bad = None
        else:
            exports = self.model.exports(self.separator)
            stale = self.baselines_stale or number == 0
            mode = "complete" if stale or self.rng.random() < 0.1 else "incremental"
            plans = ["none", "agent-crash-point", "agent-random", "server-random"]
            plans += ["server-mid-apply"]
            weights = [30, 22, 20, 14, 14]
            bad = self.rng.choice(BAD_INPUTS) if number and self.rng.random() < 0.1 else None
        plans += ["clock-jump"] + (["disk-full"] if self.disk is not None else [])
        weights += [8] + ([8] if self.disk is not None else [])
        plan = self.rng.choices(plans, weights=weights)[0]
        if self.plan is not None and number > 0 and self.plan in plans:
            plan = self.plan
        if plan == "server-mid-apply":
            mode = "complete"  # a whole table to apply: long enough to be caught in the act
        what += ", change file" if change_file else ""
        self.say(f"day {number}: {what}, {mode}, {bad or plan}")
        if bad:
            self.bad_day(exports, bad, mode)
        else:
            self.agent.write_exports(exports)
            self.expected = self.model.expected()
            self.good_day(mode, plan)
        self.check(number)
        if not bad:
            self.baselines_stale = change_file
            self.delivered = self.model.snapshot()
        report.days = number + 1

    def bad_day(self, exports: dict[str, bytes], kind: str, mode: str) -> None:
        """A spoiled export: refused in one line; baselines and store stay as they were."""
        spoiled = dict(exports)
        spoiled[ENTRIES] = bad_export(exports[ENTRIES], kind, self.separator)
        self.agent.write_exports(spoiled)
        baselines = self.agent.baselines()
        done = self.run_agent(mode)
        if done.returncode == 0:
            self.report.bad_inputs_accepted += 1
            self.say(f"    {kind} export ACCEPTED")
            self.check(-1)  # how the store compares with yesterday's rows, before the repair
            # An operator notices and reruns on the day's good export.
            self.agent.write_exports(exports)
            self.expected = self.model.expected()
            self.repair(f"{kind} export accepted: rerun complete on a good export")
            self.delivered = self.model.snapshot()
            return
        if not self.clean_failure(done):
            self.report.unclean_failures += 1
            self.say(f"    unclean failure: {done.stderr[-400:]!r}")
        else:
            self.report.bad_inputs_refused += 1
        if self.agent.baselines() != baselines:
            self.report.interventions.append(f"{kind} export moved the baselines")

    @staticmethod
    def clean_failure(done: subprocess.CompletedProcess[str]) -> bool:
        return (
            done.returncode == 1
            and "Traceback" not in done.stderr
            and done.stderr.startswith("error: ")
            and done.stderr.count("\n") == 1
        )

    def good_day(self, mode: str, plan: str) -> None:
        done = self.attempt(mode, plan)
        tries = 0
        while done is None or done.returncode != 0:
            if done is not None:  # not a kill: a failure that should not have happened
                self.report.failed_runs += 1
                if done.returncode == 1 and not self.clean_failure(done):
                    self.report.unclean_failures += 1
                self.say(f"    run failed ({done.returncode}): {done.stderr.strip()[-300:]}")
                if done.returncode in (3, 4):  # blocked, failed or cancelled on the server
                    self.repair(f"session {done.returncode=}: {done.stderr.strip()[-200:]}")
                    return
            tries += 1
            if tries > 3:
                self.repair("the agent did not succeed in 3 reruns")
                return
            done = self.run_agent(mode)  # the scheduler's next run

    def repair(self, why: str) -> None:
        """What an operator would do: cancel what waits, run a complete synchronization."""
        self.report.interventions.append(why)
        self.say(f"    INTERVENTION: {why}")
        # A complete synchronization reads a full extract (a change file would be replayed
        # from empty): on a change-file day, the export as a full extract is written first.
        self.agent.write_exports(self.model.exports(self.separator))
        earlier = set()
        for session in self.server.sessions():
            earlier.add(session["id"])
            if session["state"] in ("open", "queued", "blocked"):
                self.server.post(f"/api/sessions/{session['id']}/cancel")
        done = self.run_agent("complete")
        self.repair_sessions |= {s["id"] for s in self.server.sessions()} - earlier
        if done.returncode != 0:
            self.report.interventions.append(f"repair run failed too: {done.stderr[-200:]}")

    def check(self, number: int) -> None:
        report = self.report
        try:
            sessions = self.server.settle(timeout=self.session_timeout + 60)
        except AssertionError as stuck:
            self.repair(f"day {number}: {stuck}")
            sessions = self.server.settle(timeout=60)
        for session in sessions:
            reason = session.get("reason") or ""
            abandoned = session["state"] == "cancelled" and "abandoned" in reason
            if abandoned and session["id"] not in self.abandoned:
                self.abandoned.add(session["id"])
                if self.jumped_forward:  # the timeout fired early: the clock, not the agent
                    report.abandoned_after_clock_jump += 1
                    self.say(f"    session {session['id']} abandoned after a clock jump")
                else:
                    report.stuck_sessions += 1
                    self.say(f"    stuck session {session['id']} abandoned: {reason}")
        # One export, one delivery: of the day's sessions that were committed, at most one
        # changed the store or failed (as a second delivery of the same changes does),
        # whatever was killed and rerun. (A full extract's rerun after its baselines moved
        # sends an empty delta: a session that changes nothing delivers nothing.)
        delivered = [
            s
            for s in sessions
            if s["id"] not in self.known
            and s["id"] not in self.repair_sessions
            and (s["state"] == "failed" or (s["state"] == "done" and _changes(s) > 0))
        ]
        if len(delivered) > 1:
            report.doubled_deliveries += len(delivered) - 1
            self.say(f"    DELIVERED {len(delivered)} TIMES: {[s['id'] for s in delivered]}")
        self.known |= {s["id"] for s in sessions}
        differed = Comparison()
        for table in TABLES:
            result = compare(table, self.expected[table], self.server.resources(table))
            differed.lost += result.lost
            differed.extra += result.extra
            differed.doubled += result.doubled
        if not differed.equal:
            report.lost_rows += differed.lost
            report.extra_rows += differed.extra
            report.doubled_rows += differed.doubled
            report.mismatched_days.append(number)
            self.say(f"    STORE DIFFERS: {differed}")
            self.repair(f"day {number}: store differs from the export ({differed})")
        # A final session's uploads are deleted (a cancellation on a full disk included).
        final = {s["id"] for s in sessions if s["state"] in ("done", "failed", "cancelled")}
        uploads = self.server.data / "sessions"
        deadline = time.monotonic() + 5  # the worker deletes them just after the state
        while True:
            kept = [p.name for p in uploads.iterdir() if p.name in final]
            if not kept or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if kept:
            report.leftover_files += len(kept)
            self.say(f"    the server kept the files of final sessions: {kept}")
        stray = self.agent.leftovers()
        if stray:
            report.leftover_files += len(stray)
            self.say(f"    left behind: {stray}")


def _changes(session: dict[str, Any]) -> int:
    """Rows and links a processed session inserted, updated or deleted."""
    total = 0
    for counts in (session.get("tables") or {}).values():
        total += sum(counts.get(kind) or 0 for kind in ("inserted", "updated", "deleted"))
        for links in (counts.get("links") or {}).values():
            total += (links.get("inserted") or 0) + (links.get("deleted") or 0)
    return total


def run_soak(
    days: int,
    seed: int,
    *,
    rows: int = 2000,
    session_timeout: float = 60.0,
    separator: str = ",",
    max_minutes: float = 120.0,
    keep: bool = False,
    log: bool = True,
    change_files: float = 0.3,
    disk_full: bool = True,
    plan: str | None = None,
    database: str | None = None,
    servers: int = 1,
) -> Report:
    """``database``: a PostgreSQL URL whose database the soak may fill (an empty one), or
    ``"auto"`` for a throwaway cluster (tests/pgutil.py); ``servers`` processes share it."""
    root = Path(tempfile.mkdtemp(prefix="prepsync-soak-"))
    with contextlib.ExitStack() as stack:
        if database == "auto":
            import pgutil

            admin = stack.enter_context(pgutil.admin_url())
            database = stack.enter_context(pgutil.Databases(admin, "prepsync_soak").database())
        disk: Path | None = None
        why_not = "off (--no-disk-full)"
        if disk_full:
            try:
                # Room for the store, the sessions' files and more; small enough to fill fast.
                disk = stack.enter_context(tmpfs(root / "disk", 64 << 20))
            except MountRefused as refused:
                why_not = str(refused)
        soak = Soak(
            root,
            seed,
            rows,
            session_timeout,
            separator,
            log,
            disk,
            change_files,
            plan,
            database=database,
            servers=servers,
        )
        if disk is None:
            soak.report.disk_full = why_not
        run_days(soak, days, max_minutes)
    if keep:
        soak.say(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return soak.report


def run_days(soak: Soak, days: int, max_minutes: float) -> None:
    started = time.monotonic()
    deadline = started + max_minutes * 60
    for server in soak.servers:
        server.start()
    try:
        for number in range(days):
            if time.monotonic() > deadline:
                soak.say(f"stopping: --max-minutes {max_minutes:g} reached")
                break
            soak.day(number)
    finally:
        if soak.running is not None and soak.running.poll() is None:
            soak.running.kill()
            soak.running.wait()
        for server in soak.servers:
            server.stop()
        soak.report.seconds = time.monotonic() - started


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the soak like Ctrl-C: the finally blocks stop the server and clean up."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=2000, help="entries on the first day")
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=60.0,
        help="the server's --session-timeout: short, so that a stuck session costs a minute, "
        "not an hour, but longer than the agent's longest retry pause (30 s)",
    )
    parser.add_argument("--separator", default=",", help="field separator of the exports")
    parser.add_argument(
        "--change-files",
        type=float,
        default=0.3,
        help="share of days whose export is a change file (a command column), 0 to 1",
    )
    parser.add_argument(
        "--no-disk-full",
        action="store_true",
        help="never fill the server's disk (otherwise its data directory is on a small tmpfs "
        "when one can be mounted: root and CAP_SYS_ADMIN)",
    )
    parser.add_argument(
        "--database",
        help="the PostgreSQL store: an empty database's URL, or 'auto' for a throwaway cluster "
        "(default: SQLite in the server's data directory)",
    )
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="server processes sharing the PostgreSQL queue and one data directory; each agent "
        "run goes to one at random, each server kill takes one at random",
    )
    parser.add_argument("--max-minutes", type=float, default=120.0, help="stop after this long")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--plan",
        help="what goes wrong every day after the first, where it applies (to reproduce one "
        "scenario): none, agent-crash-point, agent-random, server-random, server-mid-apply, "
        "agent-after-commit, agent-once-committed (change-file days), clock-jump, disk-full",
    )
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    options = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    report = run_soak(
        options.days,
        options.seed,
        rows=options.rows,
        session_timeout=options.session_timeout,
        separator=options.separator,
        max_minutes=options.max_minutes,
        keep=options.keep,
        change_files=options.change_files,
        disk_full=not options.no_disk_full,
        database=options.database,
        servers=options.servers,
        plan=options.plan,
    )
    print(report.text())
    if options.json:
        document: dict[str, Any] = {**asdict(report), "kills": report.kills, "clean": report.clean}
        options.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
