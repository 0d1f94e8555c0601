#!/usr/bin/env python3
"""Time the reference server end to end against the agent's offline prepare of the same files,
on its SQLite store and (``--database``) on PostgreSQL in the same run.

For each round, and each store (fresh data directory, and a new PostgreSQL database, each time):

1. offline: ``prepsync prepare --synchronization-mode complete`` of day 1 and of day 2 (the
   agent's whole work, nothing sent);
2. online initial load of day 1 into an empty store, timed from the agent's start until the
   server says the session is ``done``;
3. online complete session of day 2 (``gen_ad.py --mutate``: about 1 % of entries updated,
   0.5 % inserted, 0.5 % deleted, members alike) against that store, timed the same way;
4. online incremental session of day 3 (day 2's next day, against day 2's baselines);
5. check: every table's stored rows (resources endpoint) equal the agent's ``.sorted.csv``.

Each online run is also split (a watcher polls the session every 20 ms): the agent until the
session is committed (prepare and upload), the server's apply until ``done``, and the agent's
wait for the verdict after that.

Issue 11's targets: online initial <= 3x the offline prepare of day 1, next-day complete <= 2x
the offline prepare of day 2. The server runs with the bench configuration's mappings, the
connector's thresholds set to 0 (so the daily complete is applied, not blocked: this measures
the apply) and one API client.

PostgreSQL (``--database postgresql://…`` of a role that may create databases, or
``--database auto``: a throwaway cluster started here like the tests' own, ``tests/pgutil.py``,
durable settings and ``wal_level=replica``): its figures are named ``postgresql_…``, beside
SQLite's, and ``postgresql_ratio_…`` divide its server's apply seconds by SQLite's (issue 19's
targets: initial and complete <= 1.5x, incremental <= 1.3x). Rounds alternate the stores, so a
change of the machine's load falls on both; ``load_average`` says how loaded it was.

    python bench/server_bench.py --rows 500000 [--repeat 3] [--database auto] [--output FILE]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
import pgutil  # noqa: E402  (the tests' throwaway PostgreSQL cluster)
from run import (  # noqa: E402  (bench/ is not a package)
    dataset_meta,
    ensure_dataset,
    ensure_next_day,
    generate,
    git_info,
    machine_info,
    remove_previous,
    results_path,
    warm_cache,
)

CLIENT, SECRET = "bench", "bench-secret"
TABLES = ("ADExport_entries", "ADExport_members")
ZERO_CONNECTOR = (
    '<Connector Identifier="AD" DisplayName_L1="Active Directory" Agent="bench" '
    'MaximumInsertedLines="0" MaximumUpdatedLines="0" MaximumDeletedLines="0" '
    'MaxPercentageInsertedLines="0" MaxPercentageUpdatedLines="0" '
    'MaxPercentageDeletedLines="0" MaximumLinkInsertedLines="0" MaximumLinkDeletedLines="0" '
    'MaxLinkPercentageInsertedLines="0" MaxLinkPercentageDeletedLines="0" />'
)


def server_config(source: Path, target: Path) -> None:
    xml = source.read_text()
    xml, count = re.subn(r"<Connector\b[^>]*/>", ZERO_CONNECTOR, xml)
    if count != 1:
        raise SystemExit(f"{source}: expected one <Connector> element")
    digest = base64.b64encode(hashlib.sha256(SECRET.encode()).digest()).decode()
    client = f'<OpenIdClient Identifier="{CLIENT}" HashedSecret="{digest}" />'
    target.write_text(xml.replace("</ConfigurationFile>", f"  {client}\n</ConfigurationFile>"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_day_after(day: Path, after: Path) -> dict[str, Any]:
    """``after``: ``day``'s next day (made again unless it already is, and newer)."""
    meta = dataset_meta(after)
    mutations = meta.get("mutations") or [{}]
    fresh = (after / "gen.json").is_file() and (
        (after / "gen.json").stat().st_mtime >= (day / "gen.json").stat().st_mtime
    )
    if mutations[-1].get("from") == str(day) and fresh:
        return meta
    print(f"generating {after} (next day of {day})", file=sys.stderr, flush=True)
    generate([sys.executable, str(BENCH / "gen_ad.py"), "--mutate", str(day), "--out", str(after)])
    return dataset_meta(after)


class LoadSampler:
    """The machine's 1-minute load average every 5 s while the bench runs: the figures of a
    shared machine mean little without it."""

    def __init__(self) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(5):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        self._stop.set()
        return {
            "min": round(min(self.samples), 2),
            "median": round(statistics.median(self.samples), 2),
            "max": round(max(self.samples), 2),
            "cpus": float(os.cpu_count() or 0),
        }


class Server:
    def __init__(
        self,
        config: Path,
        data: Path,
        log: Path,
        python_path: str | None,
        database: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The server's code: this checkout's, or python_path's. Started outside any checkout:
        # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH, so run
        # from a checkout's root it would import that checkout's prepsync whatever was asked.
        env = {**os.environ, "PYTHONPATH": python_path or str(BENCH.parent)}
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prepsync", "serve", "--config", str(config),
                 "--data-dir", str(data), "--port", str(self.port), "--log-level", "warning",
                 *(["--database", database] if database else [])],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=data.parent,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {log}")
            time.sleep(0.05)
        token = httpx.post(
            self.url + "/connect/token",
            data={"grant_type": "client_credentials", "client_id": CLIENT,
                  "client_secret": SECRET, "scope": "usercube_api"},
        ).json()["access_token"]  # fmt: skip
        self.api = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=600
        )

    def latest(self) -> dict[str, Any]:
        sessions: list[dict[str, Any]] = self.api.get("/api/connectors/AD/sessions").json()
        return sessions[0]

    def wait_done(self, session_id: str) -> dict[str, Any]:
        while True:
            state: dict[str, Any] = self.api.get(f"/api/sessions/{session_id}").json()
            if state["state"] in ("done", "failed", "blocked", "cancelled"):
                return state
            time.sleep(0.02)

    def resources_digest(self, table: str) -> str:
        digest = hashlib.sha256()
        with self.api.stream("GET", f"/api/connectors/AD/tables/{table}/resources") as answer:
            answer.raise_for_status()
            for piece in answer.iter_bytes():
                digest.update(piece)
        return digest.hexdigest()

    def stop(self) -> None:
        self.api.close()
        self.process.terminate()
        self.process.wait(30)


class Watcher:
    """Polls the connector's newest session every 20 ms while an online run goes, to split its
    time: until the session is committed (``queued``/``processing``: the agent's prepare and
    upload), until it is ``done`` (the server's apply), and until the agent exits (the wait
    for the verdict)."""

    def __init__(self, server: Server, known: set[str]) -> None:
        self.server, self.known = server, known
        self.started = time.perf_counter()
        self.committed: float | None = None
        self.settled: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, headers=self.server.api.headers) as api:
            while not self._stop.is_set() and self.settled is None:
                now = time.perf_counter() - self.started
                sessions = api.get("/api/connectors/AD/sessions").json()
                newest = sessions[0] if sessions else None
                if newest is not None and newest["id"] not in self.known:
                    if newest["state"] != "open" and self.committed is None:
                        self.committed = now
                    if newest["state"] in ("done", "failed", "blocked", "cancelled"):
                        self.settled = now
                time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def prepare(
    mode: str,
    sources: Path,
    work: Path,
    config: Path,
    log: Path,
    url: str = "",
    report: Path | None = None,
    baselines: Path | None = None,
) -> float:
    """Seconds of one ``prepsync prepare`` run (work directory emptied first); ``report``: its
    ``--report`` file; ``baselines``: a ``previous/`` folder to start from (incremental)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    remove_previous(sources)
    if baselines is not None:
        shutil.copytree(baselines, sources / "previous")
    command = [sys.executable, "-m", "prepsync", "prepare", "--connector", "AD",
               "--agent", "bench", "--synchronization-mode", mode,
               "--sources-directory", str(sources), "--working-directory", str(work),
               "--log-level", "Warning"]  # fmt: skip
    if url:
        command += ["--api-url", url, "--api-client-id", CLIENT]
    else:
        command += ["--config", str(config)]
    if report is not None:
        command += ["--report", str(report)]
    env = {**os.environ, "PREPSYNC_API_SECRET": SECRET}
    started = time.perf_counter()
    with log.open("ab") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"prepare {mode} failed ({result.returncode}); see {log}")
    return time.perf_counter() - started


REPORTED_PHASES = ("prepare", "upload", "commit", "server_apply")


def reported_phases(report: Path) -> dict[str, float]:
    """The online run's phases as its ``--report`` times them (none an older agent or server
    does not report): the prepare itself, the upload, the commit's verification and the
    server's apply."""
    document = json.loads(report.read_text())
    delivery = document.get("delivery") or {}
    phases = {"prepare": document.get("seconds"), **(delivery.get("phase_seconds") or {})}
    phases["server_apply"] = delivery.get("server_apply_seconds")
    return {
        name: float(phases[name])
        for name in REPORTED_PHASES
        if isinstance(phases.get(name), (int, float))
    }


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# The online runs of a round, in order: (name, mode, which day's files).
ONLINE = (
    ("online_initial_s", "initial", 0),
    ("online_complete_s", "complete", 1),
    ("online_incremental_s", "incremental", 2),
)
WATCHED = ("agent_until_committed_s", "server_apply_s", "verdict_wait_s")
# Issue 19: PostgreSQL's apply seconds over SQLite's, same run, same files.
POSTGRESQL_TARGETS = {"initial": 1.5, "complete": 1.5, "incremental": 1.3}


def store_prefix(store: str) -> str:
    """SQLite's figures keep their names (comparable with earlier results); PostgreSQL's are
    ``postgresql_…``."""
    return "" if store == "sqlite" else store + "_"


def online_round(
    server: Server,
    prefix: str,
    days: tuple[Path, Path, Path],
    work: Path,
    config: Path,
    log: Path,
    samples: dict[str, list[float]],
    counts: dict[str, Any],
    checks: list[str],
) -> None:
    """Initial load of day 1, complete of day 2, incremental of day 3, on one fresh store."""
    for key, mode, day_number in ONLINE:
        day = days[day_number]
        known = {session["id"] for session in server.api.get(
            "/api/connectors/AD/sessions").json()}  # fmt: skip
        # The incremental starts from the baselines the complete run left in day 2's folder.
        baselines = days[1] / "previous" if mode == "incremental" else None
        started = time.perf_counter()
        watcher = Watcher(server, known)
        report = work / f"report-{mode}.json"
        prepare(mode, day, work / "online", config, log, server.url, report, baselines)
        state = server.wait_done(server.latest()["id"])
        total = time.perf_counter() - started
        watcher.stop()
        name = prefix + key
        samples.setdefault(name, []).append(total)
        for phase, seconds in reported_phases(report).items():
            samples.setdefault(f"{name}_report_{phase}_s", []).append(seconds)
        if watcher.committed is not None and watcher.settled is not None:
            for phase, seconds in zip(
                WATCHED,
                (
                    watcher.committed,
                    watcher.settled - watcher.committed,
                    max(total - watcher.settled, 0.0),
                ),
                strict=True,
            ):
                samples.setdefault(f"{name}_{phase}", []).append(seconds)
        if state["state"] != "done":
            raise SystemExit(f"{prefix}{mode} session ended {state['state']}: {state['reason']}")
        counts[prefix + mode] = state.get("tables")
    for table in TABLES:
        stored = server.resources_digest(table)
        sent = file_digest(work / "online" / f"{table}.sorted.csv")
        checks.append("identical" if stored == sent else f"DIFFERENT {prefix}{table}")


def server_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def derived_figures(figures: dict[str, float], stores: list[str], rows: int) -> None:
    """Ratios to the offline prepare, apply microseconds per entry, PostgreSQL over SQLite."""
    for store in stores:
        prefix = store_prefix(store)
        for key, mode, day_number in ONLINE:
            offline = ("offline_day1_s", "offline_day2_s", None)[day_number]
            online = figures.get(prefix + key)
            if offline is not None and online is not None:
                figures[f"{prefix}ratio_{mode}_to_offline"] = round(online / figures[offline], 2)
            apply = figures.get(f"{prefix}{key}_report_server_apply_s")
            if apply is not None:
                figures[f"{prefix}apply_us_per_entry_{mode}"] = round(apply / rows * 1e6, 3)
    if "postgresql" in stores:
        for key, mode, _ in ONLINE:
            for measure, suffix in (("apply", "_report_server_apply_s"), ("online", "")):
                sqlite = figures.get(key + suffix)
                postgresql = figures.get("postgresql_" + key + suffix)
                if sqlite and postgresql is not None:
                    figures[f"postgresql_ratio_{measure}_{mode}_to_sqlite"] = round(
                        postgresql / sqlite, 2
                    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", default=str(BENCH / "config" / "ad.xml"))
    parser.add_argument("--work-dir", default=str(BENCH / "data" / "server-work"))
    parser.add_argument(
        "--server-pythonpath",
        help="run the server from another checkout (e.g. the code before a change)",
    )
    parser.add_argument(
        "--database",
        help="also run every round on PostgreSQL: a postgresql:// URL whose role may create "
        "databases (each round gets a new one, dropped after), or 'auto' for a throwaway "
        "cluster started here (as the tests start theirs)",
    )
    parser.add_argument(
        "--stores",
        default=None,
        help="comma-separated stores to run: sqlite,postgresql (default: sqlite, plus "
        "postgresql with --database)",
    )
    parser.add_argument("--output", help="results JSON (default bench/results/server-...)")
    args = parser.parse_args()
    stores = (args.stores or "sqlite" + (",postgresql" if args.database else "")).split(",")
    if "postgresql" in stores and not args.database:
        raise SystemExit("error: the postgresql store needs --database URL or --database auto")
    load = LoadSampler()

    day1 = BENCH / "data" / f"ad-{args.rows}-s{args.seed}-shuffled"
    meta1 = ensure_dataset(day1, args.rows, args.seed, "shuffled")
    day2 = day1.with_name(day1.name + "-next")
    meta2 = ensure_next_day(day1, day2)
    day3 = day1.with_name(day1.name + "-next2")
    meta3 = ensure_day_after(day2, day3)
    days = (day1, day2, day3)
    work = Path(args.work_dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    config = work / "server.xml"
    server_config(Path(args.config), config)
    warm_cache([day / f"{table}.csv" for day in days for table in TABLES])

    samples: dict[str, list[float]] = {"offline_day1_s": [], "offline_day2_s": []}
    postgresql_version = None
    checks: list[str] = []
    counts: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        databases: pgutil.Databases | None = None
        if "postgresql" in stores:
            admin = (
                stack.enter_context(pgutil.admin_url())
                if args.database == "auto"
                else args.database
            )
            databases = pgutil.Databases(admin, prefix="prepsync_bench")
            postgresql_version = server_version(admin)
        for round_number in range(args.repeat):
            samples["offline_day1_s"].append(prepare("complete", day1, work / "agent", config, log))
            samples["offline_day2_s"].append(prepare("complete", day2, work / "agent", config, log))
            # Alternate which store goes first, so a change of load falls on both alike.
            order = stores if round_number % 2 == 0 else stores[::-1]
            for store in order:
                data = work / "server-data"
                shutil.rmtree(data, ignore_errors=True)
                with contextlib.ExitStack() as round_stack:
                    url = None
                    if store == "postgresql":
                        assert databases is not None
                        url = round_stack.enter_context(databases.database(f"r{round_number}"))
                    server = Server(config, data, log, args.server_pythonpath, url)
                    round_stack.callback(server.stop)
                    online_round(
                        server,
                        store_prefix(store),
                        days,
                        work,
                        config,
                        log,
                        samples,
                        counts,
                        checks,
                    )
            print(
                f"round {round_number + 1}: "
                + ", ".join(
                    f"{name} {values[-1]:.2f}"
                    for name, values in samples.items()
                    if values and "_report_" not in name
                ),
                file=sys.stderr,
                flush=True,
            )
    for day in days:
        remove_previous(day)
    figures = {
        name: round(statistics.median(values), 3) for name, values in samples.items() if values
    }
    derived_figures(figures, stores, args.rows)
    git = git_info()
    results = {
        "schema": 1,
        "kind": "server",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "git": git,
        "machine": machine_info(),
        "load_average": load.summary(),
        "load_average_end": os.getloadavg(),
        "parameters": {
            "rows": args.rows,
            "repeat": args.repeat,
            "server_pythonpath": args.server_pythonpath,
            "stores": stores,
            "postgresql": None
            if databases is None
            else {
                "version": postgresql_version,
                "settings": pgutil.SETTINGS,
                "external": args.database != "auto",
            },
        },
        "datasets": {"day1": meta1, "day2": meta2, "day3": meta3},
        "figures": figures,
        "samples": samples,
        "session_counts": counts,
        "checks": checks,
        "targets": {
            "ratio_initial_to_offline": 3.0,
            "ratio_complete_to_offline": 2.0,
            **{
                f"postgresql_ratio_apply_{mode}_to_sqlite": limit
                for mode, limit in POSTGRESQL_TARGETS.items()
            },
        },
    }
    output = (
        Path(args.output)
        if args.output
        else results_path(BENCH / "results", "server-" + git["commit"])
    )
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"checks: {', '.join(sorted(set(checks)))}; written {output}")
    return 0 if all(check == "identical" for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
