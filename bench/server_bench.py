#!/usr/bin/env python3
"""Time the reference server end to end against the agent's offline prepare of the same files.

For each round (fresh server data directory each time):

1. offline: ``prepsync prepare --synchronization-mode complete`` of day 1 and of day 2 (the
   agent's whole work, nothing sent);
2. online initial load of day 1 into an empty store, timed from the agent's start until the
   server says the session is ``done``;
3. online complete session of day 2 (``gen_ad.py --mutate``: about 1 % of entries updated,
   0.5 % inserted, 0.5 % deleted, members alike) against that store, timed the same way;
4. check: every table's stored rows (resources endpoint) equal the agent's ``.sorted.csv``.

Each online run is also split (a watcher polls the session every 20 ms): the agent until the
session is committed (prepare and upload), the server's apply until ``done``, and the agent's
wait for the verdict after that.

Issue 11's targets: online initial <= 3x the offline prepare of day 1, next-day complete <= 2x
the offline prepare of day 2. The server runs with the bench configuration's mappings, the
connector's thresholds set to 0 (so the daily complete is applied, not blocked: this measures
the apply) and one API client.

    python bench/server_bench.py --rows 500000 [--repeat 3] [--output FILE]
"""

from __future__ import annotations

import argparse
import base64
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
from run import (  # noqa: E402  (bench/ is not a package)
    ensure_dataset,
    ensure_next_day,
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


class Server:
    def __init__(self, config: Path, data: Path, log: Path, python_path: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The server's code: this checkout's, or python_path's. Started outside any checkout:
        # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH, so run
        # from a checkout's root it would import that checkout's prepsync whatever was asked.
        env = {**os.environ, "PYTHONPATH": python_path or str(BENCH.parent)}
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prepsync", "serve", "--config", str(config),
                 "--data-dir", str(data), "--port", str(self.port), "--log-level", "warning"],
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
) -> float:
    """Seconds of one ``prepsync prepare`` run (work directory emptied first); ``report``: its
    ``--report`` file."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    remove_previous(sources)
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
    parser.add_argument("--output", help="results JSON (default bench/results/server-...)")
    args = parser.parse_args()

    day1 = BENCH / "data" / f"ad-{args.rows}-s{args.seed}-shuffled"
    meta1 = ensure_dataset(day1, args.rows, args.seed, "shuffled")
    day2 = day1.with_name(day1.name + "-next")
    meta2 = ensure_next_day(day1, day2)
    work = Path(args.work_dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    config = work / "server.xml"
    server_config(Path(args.config), config)
    warm_cache([day / f"{table}.csv" for day in (day1, day2) for table in TABLES])

    samples: dict[str, list[float]] = {
        "offline_day1_s": [], "offline_day2_s": [], "online_initial_s": [],
        "online_complete_s": [],
    }  # fmt: skip
    # Phases of each online run (Watcher): agent until committed, server apply, verdict wait;
    # and as the agent's report times them: upload, commit, the server's own apply_seconds.
    watched = ("agent_until_committed_s", "server_apply_s", "verdict_wait_s")
    reported = tuple(f"report_{name}_s" for name in REPORTED_PHASES)
    for online in ("online_initial_s", "online_complete_s"):
        for phase in (*watched, *reported):
            samples[f"{online}_{phase}"] = []
    checks: list[str] = []
    counts: dict[str, Any] = {}
    for round_number in range(args.repeat):
        samples["offline_day1_s"].append(prepare("complete", day1, work / "agent", config, log))
        samples["offline_day2_s"].append(prepare("complete", day2, work / "agent", config, log))
        data = work / "server-data"
        shutil.rmtree(data, ignore_errors=True)
        server = Server(config, data, log, args.server_pythonpath)
        try:
            for key, mode, day in (
                ("online_initial_s", "initial", day1),
                ("online_complete_s", "complete", day2),
            ):
                known = {session["id"] for session in server.api.get(
                    "/api/connectors/AD/sessions").json()}  # fmt: skip
                started = time.perf_counter()
                watcher = Watcher(server, known)
                report = work / f"report-{mode}.json"
                prepare(mode, day, work / "online", config, log, server.url, report)
                state = server.wait_done(server.latest()["id"])
                total = time.perf_counter() - started
                watcher.stop()
                samples[key].append(total)
                for name, seconds in reported_phases(report).items():
                    samples[f"{key}_report_{name}_s"].append(seconds)
                if watcher.committed is not None and watcher.settled is not None:
                    samples[key + "_agent_until_committed_s"].append(watcher.committed)
                    samples[key + "_server_apply_s"].append(watcher.settled - watcher.committed)
                    samples[key + "_verdict_wait_s"].append(max(total - watcher.settled, 0.0))
                if state["state"] != "done":
                    raise SystemExit(f"{mode} session ended {state['state']}: {state['reason']}")
                counts[mode] = state.get("tables")
            for table in TABLES:
                stored = server.resources_digest(table)
                sent = file_digest(work / "online" / f"{table}.sorted.csv")
                checks.append("identical" if stored == sent else f"DIFFERENT {table}")
        finally:
            server.stop()
        print(
            f"round {round_number + 1}: "
            + ", ".join(f"{name} {values[-1]:.2f}" for name, values in samples.items() if values),
            file=sys.stderr,
            flush=True,
        )
    remove_previous(day1)
    remove_previous(day2)
    figures = {
        name: round(statistics.median(values), 3) for name, values in samples.items() if values
    }
    figures["ratio_initial_to_offline"] = round(
        figures["online_initial_s"] / figures["offline_day1_s"], 2
    )
    figures["ratio_complete_to_offline"] = round(
        figures["online_complete_s"] / figures["offline_day2_s"], 2
    )
    git = git_info()
    results = {
        "schema": 1,
        "kind": "server",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "git": git,
        "machine": machine_info(),
        "load_average_end": os.getloadavg(),
        "parameters": {
            "rows": args.rows,
            "repeat": args.repeat,
            "server_pythonpath": args.server_pythonpath,
        },
        "datasets": {"day1": meta1, "day2": meta2},
        "figures": figures,
        "samples": samples,
        "session_counts": counts,
        "checks": checks,
        "targets": {"ratio_initial_to_offline": 3.0, "ratio_complete_to_offline": 2.0},
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
