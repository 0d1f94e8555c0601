#!/usr/bin/env python3
"""Time ``prepsync prepare`` against GNU sort and DuckDB on the same generated AD export.

Each measurement runs in its own fresh wrapper process (see ``MEASURE``), which starts the
tool, waits for it and reports the wall time, the CPU time and ``ru_maxrss`` of
``getrusage(RUSAGE_CHILDREN)``: the peak resident set of the largest process of the tool's
process tree (every tool here is one multi-threaded process, so that is the tool's peak
RSS). Tools alternate within every repetition (each round's order a row of a Williams
design, see ``williams_orders``) and the median of ``--repeat`` runs is reported. Results go
to ``bench/results/<date>-<commit>.json``; compare two of them with ``bench/compare.py``.
See ``bench/README.md`` for what each comparison does and does not measure.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import filecmp
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TOOLS = ("prepsync", "sort", "duckdb")
# gen_ad.py's row orders of the members file (gen_ad.MEMBERS_ORDERS; not imported: it needs
# numpy, and run.py must be able to say so in one line).
MEMBERS_ORDERS = ("clustered-dn", "clustered-member", "shuffled", "sorted")
FLOOR_NOTE = (
    "floor: dd of the same bytes on this machine, same rounds: read the inputs, write and read "
    "back the bytes prepsync spilled (its report's spill_bytes), write the outputs and fsync "
    "them. What no engine doing this work can go under without touching fewer bytes."
)
PHASES = ("read", "sort", "spill", "merge", "join", "write")  # prepsync's, in order
SCALING_ROWS = (250_000, 1_000_000, 2_000_000, 4_000_000)
SORT_NOTE = (
    "GNU sort only sorts lines by the first comma-separated field: no CSV parsing (quoted "
    "commas and line breaks), no projection, no null-key or duplicate handling, no delta. "
    "It is a lower bound, not the same work."
)

# Runs in a fresh interpreter per measurement, so RUSAGE_CHILDREN covers that tool alone.
MEASURE = r"""
import json, resource, subprocess, sys, time
def counters(path, keys):
    try:
        with open(path) as f:
            pairs = [line.replace(":", " ").split()[:2] for line in f]
    except OSError:
        return {}
    return {k: int(v) for k, v in pairs if k in keys}
spec = json.loads(sys.argv[1])
walls, rc = [], 0
mem = counters("/proc/meminfo", ("MemFree", "Cached", "Dirty"))
vm0 = counters("/proc/vmstat", spec["vmstat"])
with open(spec["log"], "ab") as log:
    start = time.perf_counter()
    for cmd in spec["cmds"]:
        t = time.perf_counter()
        rc = subprocess.call(cmd, env=spec["env"], cwd=spec["cwd"], stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t)
        if rc:
            break
    wall = time.perf_counter() - start
vm1 = counters("/proc/vmstat", spec["vmstat"])
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": wall, "walls": walls, "maxrss_kib": ru.ru_maxrss,
                  "cpu": ru.ru_utime + ru.ru_stime, "sys": ru.ru_stime,
                  "vmstat": {k: vm1[k] - vm0[k] for k in vm1 if k in vm0},
                  "meminfo_kib": mem}))
"""
# The kernel's counters read around every run (/proc/vmstat, machine-wide: other work on the
# machine counts too), to tell the page cache's part in a run's time: pages scanned and taken
# back by reclaim (the cache was full), pages read from and written to disk (in KiB), faults.
VMSTAT = (
    "pgscan_kswapd", "pgscan_direct", "pgsteal_kswapd", "pgsteal_direct", "allocstall_normal",
    "allocstall_movable", "pgpgin", "pgpgout", "pgmajfault", "pgfault", "workingset_refault_file",
    "compact_stall",
)  # fmt: skip
CACHE_MODES = ("warm", "dropped")
CACHE_NOTE = (
    "dropped: before each run the inputs are flushed and dropped from the page cache "
    "(posix_fadvise DONTNEED; the tool reads them from disk) and the previous outputs are "
    "deleted, so the cache holds only what the run itself writes; warm: the inputs stay cached "
    "as in every other section. vmstat: machine-wide counters over the run (other work counts)."
)


class BenchError(Exception):
    """A failure to report in one line (exit status 1)."""


@dataclass
class Table:
    name: str  # ConnectionTable as the configuration spells it
    source: Path
    columns: list[str]  # kept columns, source spelling, source header order
    keys: list[str]


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mib: float
    walls: list[float]
    load: float  # 1-minute load average just before the run (other work on the machine)
    # System CPU seconds, part of cpu: the kernel's page-cache work (copying reads and writes,
    # allocating pages), which grows with what the run writes rather than with its own code.
    sys: float = 0.0
    # prepsync only, from its --report: {table: {phase: seconds}} (wall and CPU), commit s
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    phases_cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    commit_s: float | None = None
    # /proc/vmstat counters over the run (VMSTAT) and /proc/meminfo (KiB) just before it.
    vmstat: dict[str, int] = field(default_factory=dict)
    meminfo_kib: dict[str, int] = field(default_factory=dict)


@dataclass
class Job:
    tool: str
    cmds: list[list[str]]
    work: Path
    setup: Callable[[], None] = lambda: None
    env: dict[str, str] = field(default_factory=lambda: tool_environment())
    samples: list[Sample] = field(default_factory=list)
    report: Path | None = None  # prepsync's --report, read after every run for phase times
    # Read into the page cache before every run (untimed): a run before may have left them out
    # (prepsync drops its inputs' pages as it reads them; a TOOL-dropped run drops them).
    inputs: list[Path] = field(default_factory=list)
    # Runs of the untimed warm-up rounds (run_jobs), kept apart from the timed samples.
    warmup_samples: list[Sample] = field(default_factory=list)
    # Runs after every run, before the next job empties the working directory, which the
    # jobs of a section share: the last moment the run's outputs can be read there.
    after: Callable[[], None] = lambda: None


# ----------------------------------------------------------------------------- config


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f), [])


def load_tables(config: Path, connector: str, sources: Path) -> list[Table]:
    """Tables, kept columns and keys of ``connector`` per REFERENCE §1."""
    kept: dict[str, list[str]] = {}
    pks: dict[str, set[str]] = {}
    entity: set[str] = set()
    files = sorted(config.glob("*.xml")) if config.is_dir() else [config]
    for path in files:
        for el in ET.parse(path).getroot().iter():
            tag = local(el.tag)
            if el.get("Connector") != connector or "ConnectionTable" not in el.attrib:
                continue
            table = el.attrib["ConnectionTable"]
            cols = kept.setdefault(table, [])
            if tag == "EntityTypeMapping":
                entity.add(table)
                for prop in el:
                    column = prop.get("ConnectionColumn")
                    if local(prop.tag) != "Property" or not column:
                        continue
                    cols.append(column)
                    if (prop.get("IsPrimaryKey") or "").lower() == "true":
                        pks.setdefault(table, set()).add(column.lower())
            elif tag == "EntityAssociationMapping":
                cols += [el.attrib["Column1"], el.attrib["Column2"]]
    tables = []
    by_lower = {p.name.lower(): p for p in sources.iterdir() if p.is_file()}
    for name, cols in kept.items():
        source = by_lower.get(f"{name}.csv".lower())
        if source is None:
            raise BenchError(f"no {name}.csv in {sources}")
        wanted = {c.lower() for c in cols}
        header = read_header(source)
        columns = [h for h in header if h.lower() in wanted]
        if len(columns) != len(wanted):
            raise BenchError(f"{source}: header lacks some of {sorted(wanted)}")
        if name in entity:
            if len(pks.get(name, ())) != 1:
                raise BenchError(f"{config}: table {name} needs exactly one IsPrimaryKey")
            keys = [c for c in columns if c.lower() in pks[name]]
        else:
            keys = list(columns)
        tables.append(Table(name, source, columns, keys))
    if not tables:
        raise BenchError(f"{config}: no mapping for connector {connector}")
    return tables


# ----------------------------------------------------------------------------- running


def tool_environment() -> dict[str, str]:
    """The tools' environment: this one, less PYTHONDONTWRITEBYTECODE. An installed prepsync
    has its bytecode compiled (pip does it at install); with writing it forbidden, every run
    of a checkout compiled its modules again, about 0.05 s on top of its ~0.09 s fixed cost."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def measure(job: Job, log: Path) -> Sample:
    spec = {"cmds": job.cmds, "env": job.env, "cwd": str(REPO), "log": str(log), "vmstat": VMSTAT}
    load = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise BenchError(f"measurement wrapper failed: {out.stderr.strip()}")
    res = json.loads(out.stdout)
    if res["rc"]:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise BenchError(
            f"{job.tool} exited with status {res['rc']}; see {log}:\n  " + "\n  ".join(tail)
        )
    return Sample(
        res["wall"],
        res["cpu"],
        res["maxrss_kib"] / 1024,
        res["walls"],
        load,
        res.get("sys", 0.0),
        vmstat=res.get("vmstat", {}),
        meminfo_kib=res.get("meminfo_kib", {}),
    )


def williams_orders(n: int) -> list[list[int]]:
    """The rounds' orders of ``n`` jobs (indices), a Williams design: round r runs row
    r mod len(rows). Every n consecutive rows from row 0 (or from row n) form a Latin square:
    each job runs in each slot once, so no job always gets the slot that follows a big free
    (bench/README.md, "Fresh pages"). Over all the rows each job also directly follows each
    other job equally often: once over n rows when n is even, twice over 2n rows (the square
    and its mirror) when n is odd, so what a run leaves behind weighs on every job alike."""
    if n < 1:
        return []
    # 0, 1, n-1, 2, n-2, ...: its successive differences are all different mod n, so adding r
    # to every element (row r) gives each ordered pair as neighbours exactly once over n rows.
    base = [0]
    low, high = 1, n - 1
    while len(base) < n:
        base.append(low)
        low += 1
        if len(base) < n:
            base.append(high)
            high -= 1
    rows = [[(b + r) % n for b in base] for r in range(n)]
    if n % 2:
        # For odd n no single square balances the neighbours; its mirror gives each pair the
        # other way round as often.
        rows += [row[::-1] for row in rows]
    return rows


def balanced_rounds(repeat: int, n: int) -> int:
    """``repeat`` rounded up to a multiple of ``n``: every job in every slot equally often."""
    return -(-repeat // n) * n if n else repeat


def run_jobs(
    jobs: list[Job],
    repeat: int,
    logs: Path,
    after_first: Callable[[], None] | None = None,
    warmup: int = 0,
    first_outputs: Path | None = None,
) -> None:
    """``warmup`` untimed rounds, then ``repeat`` timed ones; in each every job runs once, in
    the order of the round's row of ``williams_orders`` (the warm-up rounds take the rows
    before the timed rounds', so that the timed ones start from row 0: with ``repeat`` a
    multiple of the number of jobs, every job runs in every slot equally often).
    Every run starts in its job's working directory emptied (``empty_directory``); the jobs
    of a section share one, so a run's outputs last until the next run. With
    ``first_outputs``, each job's outputs of the first round (warm-up or timed) are moved
    into ``first_outputs / job.tool`` right after its run, and ``after_first`` runs once,
    after that round: every job's outputs of the same run of the same work are then there."""
    if not jobs:
        return
    rows = williams_orders(len(jobs))
    width = max(9, *(len(job.tool) for job in jobs))
    for r in range(-warmup, repeat):
        timed = r >= 0
        for job in (jobs[i] for i in rows[r % len(rows)]):
            empty_directory(job.work)
            warm_cache(job.inputs)
            job.setup()
            # Flush the previous tool's writes first (untimed): GNU sort and DuckDB leave their
            # output dirty in the page cache, and its writeback would otherwise slow down
            # whichever tool runs next. prepsync pays for its own fsync inside its timing.
            os.sync()
            if job.report is not None:
                job.report.unlink(missing_ok=True)
            sample = measure(job, logs / f"{job.work.name}-{job.tool}.log")
            if job.report is not None:
                read_phases(job.report, sample)
            job.after()
            if r == -warmup and first_outputs is not None:
                move_outputs(job.work, first_outputs / job.tool)
            (job.samples if timed else job.warmup_samples).append(sample)
            what = f"{r + 1}/{repeat}" if timed else f"warm-up {r + warmup + 1}/{warmup}"
            print(
                f"  [{what}] {job.tool:<{width}} {sample.wall:8.2f} s "
                f"{sample.rss_mib:8.1f} MiB   (load {sample.load:.2f})",
                file=sys.stderr,
                flush=True,
            )
        if r == -warmup and after_first is not None:
            after_first()


def empty_directory(path: Path) -> None:
    """Create ``path``, or remove what it holds but keep the directory itself. On ext4 a
    file's blocks go to its directory's block group, and how much system time writing them
    costs depends on that group (bench/README.md, "Where a run writes"): a directory removed
    and made again may land elsewhere, one kept stays put."""
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def move_outputs(work: Path, destination: Path) -> None:
    """Move what ``work`` holds into ``destination`` (made afresh) by renames: the same file
    system, so no byte is copied, and ``work`` itself stays where it is on disk."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for child in work.iterdir():
        child.rename(destination / child.name)


def read_phases(report: Path, sample: Sample) -> None:
    """Per-table phase times from a prepsync --report (absent from older builds' reports)."""
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return
    for table in data.get("tables", []):
        if "phase_seconds" in table:
            sample.phases[table["table"]] = table["phase_seconds"]
            sample.phases_cpu[table["table"]] = table["phase_cpu_seconds"]
    if "commit_seconds" in data:
        sample.commit_s = data["commit_seconds"]


def remove_previous(sources: Path) -> None:
    """Remove the baselines prepsync keeps in ``sources/previous/`` (benchmark data only)."""
    if (sources / "previous").exists():
        if not (sources / "gen.json").is_file():
            raise BenchError(
                f"{sources / 'previous'} holds baselines and {sources} was not made by "
                "gen_ad.py: move them away first (the benchmark replaces them)"
            )
        shutil.rmtree(sources / "previous")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(values: Sequence[float], reference: Sequence[float]) -> float:
    """The median over the rounds of each round's value / the same round's reference value
    (the two lists in round order). A round slowed down as a whole (other work on the machine)
    moves both of its runs and cancels out, where it moves a ratio of medians."""
    if len(values) != len(reference) or not values:
        raise ValueError("paired_ratio needs one value and one reference per round")
    ratios = [v / r for v, r in zip(values, reference, strict=True) if r > 0]
    return median(ratios) if ratios else float("nan")


def warm_cache(paths: Sequence[Path]) -> None:
    """Read the inputs once so that no tool pays for the first read from disk."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass


def drop_from_cache(paths: Sequence[Path]) -> None:
    """Flush each file and drop its pages from the page cache (no root needed: the file's own
    posix_fadvise DONTNEED, which leaves dirty or mapped pages alone, hence the fsync first)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_bytes(path: Path) -> int | None:
    """Bytes of the file in the page cache (util-linux fincore), None where it cannot tell."""
    text = command_output(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)])
    try:
        return int(text.split()[0])
    except (IndexError, ValueError):
        return None


def sort_size(budget: str) -> str:
    """``256MiB`` -> ``256M`` for sort -S (whose K/M/G are powers of 1024)."""
    text = budget.strip().lower()
    for suffix, unit in (("gib", "G"), ("mib", "M"), ("kib", "K")):
        if text.endswith(suffix):
            return text[: -len(suffix)] + unit
    for suffix, mult in (("gb", 10**9), ("mb", 10**6), ("kb", 10**3), ("b", 1)):
        if text.endswith(suffix):
            return str(int(float(text[: -len(suffix)]) * mult // 1024)) + "K"
    return str(int(text) // 1024) + "K"


# ----------------------------------------------------------------------------- datasets


def dataset_meta(path: Path) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads((path / "gen.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta


def members_order_of(meta: dict[str, Any]) -> str:
    """The members order of an export (gen.json before --members-order: from --order)."""
    order = meta.get("members_order")
    if isinstance(order, str):
        return order
    return "sorted" if meta.get("order") == "sorted" else "clustered-dn"


def ensure_dataset(
    path: Path, rows: int, seed: int, order: str, members_order: str | None = None
) -> dict[str, Any]:
    meta = dataset_meta(path)
    wanted_members = members_order or members_order_of({"order": order})
    if (
        meta.get("rows") == rows
        and meta.get("seed") == seed
        and meta.get("order") == order
        and members_order_of(meta) == wanted_members
        and not meta.get("mutations")
        and (path / "ADExport_entries.csv").is_file()
    ):
        return meta
    print(f"generating {path} ({rows} rows)", file=sys.stderr, flush=True)
    gen = [sys.executable, str(BENCH / "gen_ad.py"), "--rows", str(rows), "--out", str(path)]
    gen += ["--seed", str(seed), "--order", order, "--members-order", wanted_members]
    generate(gen)
    return dataset_meta(path)


def generate(cmd: list[str]) -> None:
    """Runs gen_ad.py; its own one-line errors (numpy missing...) end the bench as they are."""
    if importlib.util.find_spec("numpy") is None:
        raise BenchError("generating data needs numpy: pip install -r bench/requirements.txt")
    if subprocess.run(cmd, check=False).returncode:
        raise BenchError(f"data generation failed: {shlex.join(cmd)}")


def ensure_next_day(day1: Path, day2: Path) -> dict[str, Any]:
    meta = dataset_meta(day2)
    muts = meta.get("mutations") or [{}]
    fresh = (day2 / "gen.json").is_file() and (
        (day2 / "gen.json").stat().st_mtime >= (day1 / "gen.json").stat().st_mtime
    )
    if muts[-1].get("from") == str(day1) and len(muts) == 1 and fresh:
        return meta
    print(f"generating {day2} (next day of {day1})", file=sys.stderr, flush=True)
    gen = [sys.executable, str(BENCH / "gen_ad.py"), "--mutate", str(day1), "--out", str(day2)]
    generate(gen)
    return dataset_meta(day2)


# ----------------------------------------------------------------------------- the tools


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = Path(args.config).resolve()
        self.work_root = Path(args.work_dir).resolve()
        self.logs = self.work_root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tools: list[str] = args.tools
        self.prepsync = shlex.split(args.prepsync_cmd) if args.prepsync_cmd else []
        if not self.prepsync:
            self.prepsync = [sys.executable, "-m", "prepsync"]
        self.base_prepsync = shlex.split(args.base_prepsync_cmd or "")
        self.figures: dict[str, dict[str, Any]] = {}
        self.samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.checks: dict[str, str] = {}
        self.reports: dict[str, Any] = {}
        self.datasets: dict[str, dict[str, Any]] = {}
        self.lines: list[str] = []
        self.floor_bytes: dict[str, dict[str, int]] = {}
        self.first_members_order: str | None = (args.members_order or [None])[0]
        self.warmup_samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.sweep_rounds: dict[str, int] = {}

    def say(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)

    def prepsync_job(
        self,
        section: str,
        sources: Path,
        mode: str,
        budget: str,
        tool: str = "prepsync",
        command: list[str] | None = None,
        work: Path | None = None,
    ) -> Job:
        work = work or self.work_dir(section)
        report = self.work_root / f"{section}-{tool}-report.json"
        cmd = [
            *(command or self.prepsync), "prepare", "--connector", self.args.connector,
            "--agent", "bench", "--synchronization-mode", mode,
            "--config", str(self.config), "--sources-directory", str(sources),
            "--working-directory", str(work),
            "--memory-budget", budget, "--report", str(report),
        ]  # fmt: skip
        # prepsync advances its baseline in sources/previous/ after every run: start each run
        # from the same state (none for complete, the saved one for incremental, see
        # incremental()).
        inputs = sorted(sources.glob("*.csv"))
        return Job(
            tool, [cmd], work, setup=lambda: remove_previous(sources), report=report, inputs=inputs
        )

    def work_dir(self, section: str) -> Path:
        """The one working directory of all the jobs of ``section``, whatever the tool or the
        build: the tools are compared at the same place on disk (see ``empty_directory``)."""
        return self.work_root / section

    def check_dir(self, section: str) -> Path:
        """Where each job's outputs of ``section``'s first round are kept for the checks."""
        return self.work_root / "check" / section

    def jobs(self, section: str, sources: Path, tables: list[Table], mode: str) -> list[Job]:
        out: list[Job] = []
        work = self.work_dir(section)
        for tool in self.tools:
            if tool == "prepsync":
                out.append(self.prepsync_job(section, sources, mode, self.args.memory_budget))
                if self.base_prepsync:
                    # Another build, alternating with this one in the same rounds: the way to
                    # compare two builds on a machine whose load moves.
                    job = self.prepsync_job(
                        section, sources, mode, self.args.memory_budget, "base", self.base_prepsync
                    )
                    out.append(job)
            elif tool == "sort":
                env = dict(os.environ, LC_ALL="C")
                size = sort_size(self.args.memory_budget)
                cmds = [
                    ["sort", "-S", size, "-t", ",", "-k1,1", "--parallel=2", "-T", str(work),
                     "-o", str(work / f"{t.name}.sort.out"), str(t.source)]
                    for t in tables
                ]  # fmt: skip
                out.append(Job(tool, cmds, work, env=env, inputs=[t.source for t in tables]))
            else:
                spec_path = self.work_root / f"{section}-duckdb.json"
                spec = {
                    "mode": mode,
                    "work": str(work),
                    "memory_limit": self.args.duckdb_memory,
                    "threads": self.args.duckdb_threads,
                    "tables": [
                        {
                            "name": t.name,
                            "source": str(t.source),
                            "columns": t.columns,
                            "keys": t.keys,
                            "baseline": str(self.baseline / f"{t.name}.sorted.csv"),
                        }
                        for t in tables
                    ],
                }
                spec_path.write_text(json.dumps(spec, indent=2))
                cmd = [sys.executable, str(BENCH / "duckdb_prepare.py"), str(spec_path)]
                out.append(Job(tool, [cmd], work, inputs=[t.source for t in tables]))
        prepsync = next((job for job in out if job.tool == "prepsync"), None)
        if self.args.floor and mode == "complete" and prepsync is not None:
            out.append(self.floor_job(section, tables, prepsync))
        return out

    def floor_job(self, section: str, tables: list[Table], prepsync: Job) -> Job:
        """dd of the bytes prepsync reads, spills and writes (FLOOR_NOTE), as many as
        ``prepsync``'s latest run did: its outputs are measured right after each of its runs,
        before the next run empties the working directory they share."""
        work = prepsync.work
        report = prepsync.report
        job = Job("floor", [], work, inputs=[t.source for t in tables])

        def measure_outputs() -> None:
            out_bytes = sum(p.stat().st_size for p in work.glob("*.csv"))
            try:
                reported = json.loads(report.read_text()).get("tables", []) if report else []
            except (OSError, ValueError):
                reported = []
            runs = {t["table"]: t.get("runs", 0) for t in reported}
            if reported and all("spill_bytes" in t for t in reported):
                spill_bytes = sum(int(t["spill_bytes"]) for t in reported)  # what it wrote
            else:  # a build that does not report it: about the outputs of the tables that spilled
                spill_bytes = sum(
                    (work / f"{t.name}{suffix}").stat().st_size
                    for t in tables
                    if runs.get(t.name, 1)
                    for suffix in (".sorted.csv", ".duplicates.csv")
                    if (work / f"{t.name}{suffix}").is_file()
                )
            self.floor_bytes[section] = {"spill": spill_bytes, "outputs": out_bytes}

        prepsync.after = measure_outputs

        def setup() -> None:
            # Before prepsync's first run there is nothing to copy: only a warm-up round can
            # put the floor first (round 0 of williams_orders starts with the first job).
            sizes = self.floor_bytes.get(section, {"spill": 0, "outputs": 0})
            spill_bytes, out_bytes = sizes["spill"], sizes["outputs"]
            dd = ["dd", "bs=1M", "status=none"]
            job.cmds = [
                *([*dd, f"if={t.source}", "of=/dev/null"] for t in tables),
                [*dd, "if=/dev/zero", f"of={work / 'spill'}", f"count={spill_bytes}",
                 "iflag=count_bytes"],
                [*dd, f"if={work / 'spill'}", "of=/dev/null"],
                ["rm", str(work / "spill")],  # as the merge frees the runs before the outputs
                [*dd, "if=/dev/zero", f"of={work / 'outputs'}", f"count={out_bytes}",
                 "iflag=count_bytes", "conv=fsync"],
            ]  # fmt: skip

        job.setup = setup
        return job

    @property
    def baseline(self) -> Path:
        return self.work_root / "baseline"

    def record(self, section: str, jobs: list[Job], rows: int | None) -> None:
        fig = self.figures
        for job in jobs:
            wall = median([s.wall for s in job.samples])
            rss = median([s.rss_mib for s in job.samples])
            cpu = median([s.cpu for s in job.samples])
            sys_cpu = median([s.sys for s in job.samples])
            fig[f"{section}.{job.tool}.wall_s"] = {"value": wall, "unit": "s", "kind": "time"}
            fig[f"{section}.{job.tool}.cpu_s"] = {"value": cpu, "unit": "s", "kind": "time"}
            fig[f"{section}.{job.tool}.sys_s"] = {"value": sys_cpu, "unit": "s", "kind": "time"}
            fig[f"{section}.{job.tool}.peak_rss_mib"] = {"value": rss, "unit": "MiB", "kind": "rss"}
            if rows:
                fig[f"{section}.{job.tool}.us_per_row"] = {
                    "value": wall / rows * 1e6, "unit": "us/row", "kind": "time"
                }  # fmt: skip
                for what, value in (("user", cpu - sys_cpu), ("sys", sys_cpu)):
                    fig[f"{section}.{job.tool}.{what}_us_per_row"] = {
                        "value": value / rows * 1e6, "unit": "us/row", "kind": "time"
                    }  # fmt: skip
            self.record_phases(section, job)
            self.samples.setdefault(section, {})[job.tool] = [s.__dict__ for s in job.samples]
        if f"{section}.prepsync.wall_s" in fig:
            for other in ("sort", "duckdb", "base", "floor"):
                if f"{section}.{other}.wall_s" not in fig:
                    continue
                for what, key in (("wall", "wall_s"), ("cpu", "cpu_s"), ("rss", "peak_rss_mib")):
                    p = fig[f"{section}.prepsync.{key}"]["value"]
                    o = fig[f"{section}.{other}.{key}"]["value"]
                    fig[f"{section}.ratio.prepsync/{other}.{what}"] = {
                        "value": p / o if o else float("nan"), "unit": "x", "kind": "ratio"
                    }  # fmt: skip

    def record_phases(self, section: str, job: Job) -> None:
        """Median wall and CPU seconds of each table's phases, so a regression names its phase."""
        fig = self.figures
        tables = list(job.samples[0].phases) if job.samples else []
        for table in tables:
            for phase in job.samples[0].phases[table]:
                for kind, attr in (("s", "phases"), ("cpu_s", "phases_cpu")):
                    values = [getattr(s, attr).get(table, {}).get(phase, 0.0) for s in job.samples]
                    fig[f"{section}.{job.tool}.phase.{table}.{phase}_{kind}"] = {
                        "value": median(values), "unit": "s", "kind": "phase"
                    }  # fmt: skip
        commits = [s.commit_s for s in job.samples if s.commit_s is not None]
        if commits:
            fig[f"{section}.{job.tool}.commit_s"] = {
                "value": median(commits), "unit": "s", "kind": "phase"
            }  # fmt: skip

    def print_phases(self, section: str, jobs: list[Job]) -> None:
        fig = self.figures
        for job in jobs:
            prefix = f"{section}.{job.tool}.phase."
            names = [n[len(prefix) :] for n in fig if n.startswith(prefix)]
            tables = sorted({n.rsplit(".", 1)[0] for n in names})
            for table in tables:
                cells = " ".join(
                    f"{phase} {fig[f'{prefix}{table}.{phase}_s']['value']:.2f}"
                    for phase in PHASES
                    if f"{prefix}{table}.{phase}_s" in fig
                )
                self.say(f"  {job.tool} {table} phases (wall s): {cells}")

    def print_floor(self, section: str, jobs: list[Job]) -> None:
        """The floor's parts (median seconds of each), recorded as figures too."""
        job = next((j for j in jobs if j.tool == "floor"), None)
        if job is None or not job.samples:
            return
        n_read = len(job.samples[0].walls) - 4
        parts = {
            "read": [sum(s.walls[:n_read]) for s in job.samples],
            "spill": [s.walls[n_read] + s.walls[n_read + 1] for s in job.samples],
            "write": [s.walls[n_read + 3] for s in job.samples],
        }
        for part, values in parts.items():
            self.figures[f"{section}.floor.{part}_s"] = {
                "value": median(values), "unit": "s", "kind": "phase"
            }  # fmt: skip
        sizes = self.floor_bytes.get(section, {})
        self.say(
            "  floor: "
            + ", ".join(f"{part} {median(v):.2f} s" for part, v in parts.items())
            + f" (spill {sizes.get('spill', 0) / 1e9:.2f} GB,"
            f" outputs {sizes.get('outputs', 0) / 1e9:.2f} GB)"
        )

    def print_section(self, title: str, section: str, jobs: list[Job]) -> None:
        fig = self.figures
        self.say(title)
        self.say(f"  {'tool':<10}{'wall s':>9}{'cpu s':>9}{'peak RSS MiB':>14}   runs (wall s)")
        for job in jobs:
            name = job.tool + ("*" if job.tool == "sort" else "")
            runs = " ".join(f"{s.wall:.2f}" for s in job.samples)
            self.say(
                f"  {name:<10}{fig[f'{section}.{job.tool}.wall_s']['value']:>9.2f}"
                f"{fig[f'{section}.{job.tool}.cpu_s']['value']:>9.2f}"
                f"{fig[f'{section}.{job.tool}.peak_rss_mib']['value']:>14.1f}   {runs}"
            )
        self.print_floor(section, jobs)
        for other in ("sort", "duckdb", "base", "floor"):
            wall = fig.get(f"{section}.ratio.prepsync/{other}.wall")
            cpu = fig.get(f"{section}.ratio.prepsync/{other}.cpu")
            rss = fig.get(f"{section}.ratio.prepsync/{other}.rss")
            if wall and cpu and rss:
                # CPU seconds move much less than wall time with other work on the machine.
                self.say(
                    f"  prepsync/{other}: {wall['value']:.2f}x wall, {cpu['value']:.2f}x CPU,"
                    f" {rss['value']:.2f}x peak RSS"
                )
        self.print_phases(section, jobs)
        if "sort" in self.tools:
            self.say(f"  * {SORT_NOTE}")
        if any(job.tool == "floor" for job in jobs):
            self.say(f"  {FLOOR_NOTE}")

    def cross_check(self, section: str, tables: list[Table], suffix: str) -> None:
        """prepsync's outputs should be byte-identical to DuckDB's and to the base build's:
        those of the first round, each tool's moved to ``check_dir`` after its run."""
        if "prepsync" not in self.tools:
            return
        others = [
            o for o in ("duckdb", "base") if o in self.tools or (o == "base" and self.base_prepsync)
        ]
        for other in others:
            for t in tables:
                name = f"{t.name}{suffix}"
                a = self.check_dir(section) / "prepsync" / name
                b = self.check_dir(section) / other / name
                if not a.is_file() or not b.is_file():
                    verdict = "missing"
                else:
                    verdict = "identical" if filecmp.cmp(a, b, shallow=False) else "DIFFERENT"
                key = f"{section}.{name}" if other == "duckdb" else f"{section}.base.{name}"
                self.checks[key] = verdict
                self.say(f"  check {name}: prepsync vs {other} output {verdict}")

    def save_baselines(self, section: str, tables: list[Table]) -> None:
        """Keep the complete run's sorted outputs (of the first round, in ``check_dir``) as
        the incremental runs' baselines."""
        src_tool = "prepsync" if "prepsync" in self.tools else "duckdb"
        if src_tool not in self.tools:
            return
        self.baseline.mkdir(parents=True, exist_ok=True)
        for t in tables:
            name = f"{t.name}.sorted.csv"
            source, baseline = self.check_dir(section) / src_tool / name, self.baseline / name
            baseline.unlink(missing_ok=True)  # an earlier section's (another members order)
            try:
                os.link(source, baseline)  # the check copy is removed, the baseline kept
            except OSError:  # another file system
                shutil.copyfile(source, baseline)

    def checked(self, section: str, checks: Callable[[], None]) -> Callable[[], None]:
        """``checks`` of the first round's outputs (``run_jobs``' after_first), then the
        removal of those outputs, unless --keep-work."""

        def after_first() -> None:
            checks()
            if not self.args.keep_work:
                shutil.rmtree(self.check_dir(section), ignore_errors=True)

        return after_first

    def load_report(self, section: str) -> None:
        path = self.work_root / f"{section}-prepsync-report.json"
        if path.is_file():
            try:
                self.reports[section] = json.loads(path.read_text())
            except ValueError:
                self.reports[section] = {"unreadable": path.read_text(errors="replace")[:2000]}

    def cleanup(self, jobs: list[Job], sources: Path) -> None:
        """The section's working directory is emptied but kept (unless --keep-work: the last
        run's outputs stay), so that a later run of the section writes to the same place."""
        remove_previous(sources)
        if not self.args.keep_work:
            for work in {job.work for job in jobs}:
                if work.is_dir():
                    empty_directory(work)

    # ------------------------------------------------------------------------- sections

    def complete(self, data: Path, meta: dict[str, Any], section: str = "complete") -> list[Table]:
        self.datasets[section] = meta
        remove_previous(data)
        tables = load_tables(self.config, self.args.connector, data)
        warm_cache([t.source for t in tables])
        jobs = self.jobs(section, data, tables, "complete")

        def checks() -> None:
            self.cross_check(section, tables, ".sorted.csv")
            self.save_baselines(section, tables)

        run_jobs(
            jobs,
            self.args.repeat,
            self.logs,
            self.checked(section, checks),
            self.warmup_rounds(section),
            first_outputs=self.check_dir(section),
        )
        self.record(section, jobs, meta.get("entries_rows"))
        self.record_warmups(section, jobs)
        self.load_report(section)
        self.say()
        self.print_section(f"complete synchronization: {describe(data, meta)}", section, jobs)
        self.cleanup(jobs, data)
        return tables

    def incremental(self, day2: Path, meta: dict[str, Any], section: str = "incremental") -> None:
        self.datasets[section] = meta
        remove_previous(day2)
        tables = load_tables(self.config, self.args.connector, day2)
        have = all((self.baseline / f"{t.name}.sorted.csv").is_file() for t in tables)
        if not have and self.tools != ["sort"]:
            raise BenchError("no baselines: the complete run did not produce them")
        previous = day2 / "previous"

        def restore() -> None:
            # Hard links, as prepsync itself leaves its baselines (it never writes into one; it
            # replaces them by rename). A copy would also take, just before the timed run, the
            # page-cache pages the previous run freed: on a VM whose host reclaims free guest
            # memory (bench/README.md, "Fresh pages") the run's own writes then get fresh pages,
            # ~2 s of system time per GB instead of ~0.2.
            remove_previous(day2)
            previous.mkdir()
            for t in tables:
                name = f"{t.name}.sorted.csv"
                try:
                    os.link(self.baseline / name, previous / name)
                except OSError:  # another file system
                    shutil.copyfile(self.baseline / name, previous / name)

        warm_cache([t.source for t in tables])
        jobs = self.jobs(section, day2, tables, "incremental")
        for job in jobs:
            if job.tool in ("prepsync", "base"):
                job.setup = restore  # prepsync advances the baseline: put it back every run
        run_jobs(
            jobs,
            self.args.repeat,
            self.logs,
            self.checked(section, lambda: self.cross_check(section, tables, ".sorted.delta.csv")),
            self.warmup_rounds(section),
            first_outputs=self.check_dir(section),
        )
        self.record(section, jobs, meta.get("entries_rows"))
        self.record_warmups(section, jobs)
        self.load_report(section)
        self.say()
        self.print_section(
            f"incremental synchronization: {describe(day2, meta)}, baselines in previous/",
            section,
            jobs,
        )
        self.say("  (sort* sorts the new export only; DuckDB reads the same baselines)")
        self.cleanup(jobs, day2)

    def scaling(self, sizes: Sequence[int]) -> None:
        names: list[str] = []
        for rows in sizes:
            data = self.data_dir(rows, self.first_members_order)
            self.datasets[f"scaling-{rows}"] = ensure_dataset(
                data, rows, self.args.seed, self.args.order, self.first_members_order
            )
            tables = load_tables(self.config, self.args.connector, data)
            sources = [t.source for t in tables]
            warm_cache(sources)
            section = f"scaling-{rows}"
            jobs = self.cache_jobs(section, self.jobs(section, data, tables, "complete"), sources)
            names = [job.tool for job in jobs]
            print(f"scaling: {rows} rows", file=sys.stderr, flush=True)
            run_jobs(jobs, self.args.repeat, self.logs, warmup=self.warmup_rounds(section))
            self.record(section, jobs, rows)
            self.record_warmups(section, jobs)
            self.record_vmstat(section, jobs)
            self.cleanup(jobs, data)
        fixed = self.fixed_cost(self.data_dir(min(sizes), self.first_members_order))
        fig = self.figures
        for rows in sizes:
            for name in names:
                wall = fig[f"scaling-{rows}.{name}.wall_s"]["value"]
                base = fixed[name.removesuffix("-dropped")]  # start-up does not read the rows
                fig[f"scaling-{rows}.{name}.us_per_row_net"] = {
                    "value": (wall - base) / rows * 1e6, "unit": "us/row", "kind": "time"
                }  # fmt: skip
        self.say()
        self.say("scaling (complete synchronization, median wall time per entries row)")
        self.say(
            "  net: less the tool's run on the same export with its rows left out "
            "(start-up, configuration, fsyncs): "
            + ", ".join(f"{tool} {cost:.3f} s" for tool, cost in fixed.items())
        )
        width = max(18, *(len(n) + 8 for n in names))
        self.say(f"  {'rows':>10}" + "".join(f"{n + ' us/row':>{width}}{'net':>8}" for n in names))
        for rows in sizes:
            cells = "".join(
                f"{fig[f'scaling-{rows}.{n}.us_per_row']['value']:>{width}.2f}"
                f"{fig[f'scaling-{rows}.{n}.us_per_row_net']['value']:>8.2f}"
                for n in names
            )
            self.say(f"  {rows:>10}{cells}")
        small, big = min(sizes), max(sizes)
        if big != small:
            cells = []
            for n in names:
                ratio = (
                    fig[f"scaling-{big}.{n}.us_per_row"]["value"]
                    / fig[f"scaling-{small}.{n}.us_per_row"]["value"]
                )
                fig[f"scaling.ratio.{n}.{big}/{small}"] = {
                    "value": ratio, "unit": "x", "kind": "ratio"
                }  # fmt: skip
                cells.append(f"{n} {ratio:.2f}x")
            self.say(f"  time per row, {big} / {small} rows: " + ", ".join(cells))
        self.say("  CPU per entries row, user + system (the kernel's page-cache work) in us:")
        for rows in sizes:
            cells = "".join(
                f"  {n} {fig[f'scaling-{rows}.{n}.user_us_per_row']['value']:.2f}"
                f" + {fig[f'scaling-{rows}.{n}.sys_us_per_row']['value']:.2f}"
                for n in names
            )
            self.say(f"  {rows:>10}{cells}")
        self.print_vmstat(sizes, names)
        if "floor" in names:
            self.say(f"  {FLOOR_NOTE}")

    def cache_jobs(self, section: str, jobs: list[Job], sources: Sequence[Path]) -> list[Job]:
        """The section's jobs in each --page-cache mode, alternating in the same rounds: `warm`
        as they are (every run finds its inputs in the page cache, see Job.inputs), `dropped`
        as TOOL-dropped in the same working directory, the inputs dropped from the cache
        before each run (CACHE_NOTE)."""
        modes: list[str] = self.args.page_cache
        out: list[Job] = []
        for job in jobs:
            if "warm" in modes:
                out.append(job)
            if "dropped" in modes and job.tool != "floor":  # dd's cost per byte is the floor
                out.append(self.dropped_job(section, job, sources))
        return out

    def dropped_job(self, section: str, job: Job, sources: Sequence[Path]) -> Job:
        tool = f"{job.tool}-dropped"
        cmds = [list(cmd) for cmd in job.cmds]
        report = None
        if job.report is not None:  # its own report, the same working directory
            report = self.work_root / f"{section}-{tool}-report.json"
            cmds = [[str(report) if arg == str(job.report) else arg for arg in cmd] for cmd in cmds]
        dropped = Job(tool, cmds, job.work, env=job.env, report=report)

        def setup(inner: Callable[[], None] = job.setup) -> None:
            inner()
            drop_from_cache(sources)
            left = [cached_bytes(p) for p in sources]
            if all(n is not None for n in left):
                self.checks[f"{section}.inputs_cached_after_drop_bytes"] = str(
                    sum(n for n in left if n is not None)
                )

        dropped.setup = setup
        return dropped

    def record_vmstat(self, section: str, jobs: list[Job]) -> None:
        for job in jobs:
            for key in VMSTAT:
                values = [s.vmstat[key] for s in job.samples if key in s.vmstat]
                if values:
                    self.figures[f"{section}.{job.tool}.vmstat.{key}"] = {
                        "value": median(values), "unit": "count", "kind": "vmstat"
                    }  # fmt: skip

    def print_vmstat(self, sizes: Sequence[int], names: Sequence[str]) -> None:
        """Median over the runs of what the kernel did during each (VMSTAT): 4 KiB pages scanned
        and reclaimed, MB read from and written to disk, major faults."""
        fig = self.figures

        def value(rows: int, name: str, *keys: str) -> float:
            figures = (fig.get(f"scaling-{rows}.{name}.vmstat.{k}", {}) for k in keys)
            return sum(f.get("value", 0) for f in figures)

        if not any(f"scaling-{rows}.{n}.vmstat.pgpgin" in fig for rows in sizes for n in names):
            return
        self.say(
            "  kernel during the run (median; machine-wide): reclaim scanned / reclaimed MB,"
            " disk read / written MB, major faults"
        )
        for rows in sizes:
            for n in names:
                scan = value(rows, n, "pgscan_kswapd", "pgscan_direct") * 4096 / 1e6
                steal = value(rows, n, "pgsteal_kswapd", "pgsteal_direct") * 4096 / 1e6
                read = value(rows, n, "pgpgin") * 1024 / 1e6
                written = value(rows, n, "pgpgout") * 1024 / 1e6
                majors = value(rows, n, "pgmajfault")
                self.say(
                    f"  {rows:>10} {n:<18} {scan:8.0f} / {steal:<8.0f} {read:8.0f} / "
                    f"{written:<8.0f} {majors:6.0f}"
                )
        if "dropped" in self.args.page_cache:
            self.say(f"  {CACHE_NOTE}")

    def fixed_cost(self, like: Path) -> dict[str, float]:
        """Each tool's median wall time on `like`'s files cut to their header lines: what a run
        costs whatever its size, which dominates the smallest sizes' time per row."""
        empty = BENCH / "data" / "ad-header-only"
        empty.mkdir(parents=True, exist_ok=True)
        # remove_previous() only touches a folder that gen_ad.py made, which gen.json marks.
        (empty / "gen.json").write_text(json.dumps({"rows": 0, "made_by": "run.py"}))
        for source in like.glob("*.csv"):
            with open(source, "rb") as full:
                (empty / source.name).write_bytes(full.readline())
        tables = load_tables(self.config, self.args.connector, empty)
        jobs = self.jobs("scaling-0", empty, tables, "complete")
        print("scaling: header-only export (fixed cost)", file=sys.stderr, flush=True)
        run_jobs(jobs, self.args.repeat, self.logs, warmup=self.warmup_rounds("scaling-0"))
        self.record("scaling-0", jobs, None)
        self.record_warmups("scaling-0", jobs)
        self.cleanup(jobs, empty)
        return {job.tool: self.figures[f"scaling-0.{job.tool}.wall_s"]["value"] for job in jobs}

    def warmup_rounds(self, section: str) -> int:
        """--warmup, or its default: one round for the budget sweep, none elsewhere."""
        if self.args.warmup is not None:
            return int(self.args.warmup)
        return 1 if section == "budget" else 0

    def record_warmups(self, section: str, jobs: list[Job]) -> None:
        for job in jobs:
            if job.warmup_samples:
                runs = [s.__dict__ for s in job.warmup_samples]
                self.warmup_samples.setdefault(section, {})[job.tool] = runs

    def budget_sweep(self, data: Path, meta: dict[str, Any], budgets: Sequence[str]) -> None:
        """prepsync's complete run at each budget, alternating, against --memory-budget's.

        The budgets' order changes from round to round (williams_orders) after untimed warm-up
        rounds, and the rounds are a multiple of the number of budgets: the same work at two
        budgets measured 1.08-1.27x apart when one of them held the slot after a big free in
        the first rounds (bench/README.md, "Budget sweep")."""
        section = "budget"
        # One working directory for every budget (work_dir): the runs then write to the same
        # place on disk, so that only the budget differs between them (see empty_directory).
        jobs = [
            self.prepsync_job(section, data, "complete", b, tool=f"prepsync@{b}") for b in budgets
        ]
        warmup = self.warmup_rounds(section)
        # --repeat 1 is a smoke run: kept at one round (said below), not tripled.
        repeat = self.args.repeat
        rounds = repeat if repeat == 1 else balanced_rounds(repeat, len(jobs))
        design = len(williams_orders(len(jobs)))
        self.sweep_rounds = {"warmup": warmup, "timed": rounds, "design": design}
        warm_cache([t.source for t in load_tables(self.config, self.args.connector, data)])
        print("budget sweep: " + ", ".join(budgets), file=sys.stderr, flush=True)
        run_jobs(jobs, rounds, self.logs, warmup=warmup)
        self.record(section, jobs, meta.get("entries_rows"))
        self.record_warmups(section, jobs)
        fig = self.figures
        ref = self.args.memory_budget
        self.say()
        self.say(f"budget sweep (prepsync, complete synchronization; ratios to {ref})")
        rounded = f" (--repeat {repeat} rounded up)" if rounds != repeat else ""
        if rounds % len(jobs):
            balance = (
                "the budgets are NOT in every slot equally often (--repeat 1: a smoke run; "
                f"more rounds are rounded up to a multiple of {len(jobs)})"
            )
        else:
            balance = (
                f"every budget in every slot {rounds // len(jobs)} time(s); which budget "
                "follows which "
                + ("is balanced too" if rounds % design == 0 else f"balances over {design} rounds")
            )
        self.say(
            f"  {warmup} untimed warm-up round(s), then {rounds} timed round(s){rounded}: "
            + balance
        )
        self.say(
            f"  {'budget':<10}{'wall s':>9}{'cpu s':>9}{'peak RSS MiB':>14}{'wall ratio':>12}"
            f"{'paired':>9}   runs (wall s, round order)"
        )
        ref_job = next((job for job in jobs if job.tool == f"prepsync@{ref}"), None)
        for b, job in zip(budgets, jobs, strict=True):
            wall = fig[f"{section}.prepsync@{b}.wall_s"]["value"]
            ratio = paired = ""
            if ref_job is not None:
                base = fig[f"{section}.prepsync@{ref}.wall_s"]["value"]
                fig[f"{section}.ratio.{b}/{ref}.wall"] = {
                    "value": wall / base if base else float("nan"), "unit": "x", "kind": "ratio"
                }  # fmt: skip
                ratio = f"{wall / base:.2f}x" if base else "-"
                # Each round's run over the same round's reference run, the median of those.
                value = paired_ratio(
                    [s.wall for s in job.samples], [s.wall for s in ref_job.samples]
                )
                fig[f"{section}.ratio.{b}/{ref}.wall_paired"] = {
                    "value": value, "unit": "x", "kind": "ratio"
                }  # fmt: skip
                paired = f"{value:.2f}x"
            runs = " ".join(f"{s.wall:.2f}" for s in job.samples)
            self.say(
                f"  {b:<10}{wall:>9.2f}{fig[f'{section}.prepsync@{b}.cpu_s']['value']:>9.2f}"
                f"{fig[f'{section}.prepsync@{b}.peak_rss_mib']['value']:>14.1f}{ratio:>12}"
                f"{paired:>9}   {runs}"
            )
        if ref_job is None:
            self.say(f"  (no ratios: --memory-budget {ref} is not one of the sweep's budgets)")
        else:
            self.say(
                "  wall ratio: of the medians; paired: the median over the rounds of each "
                f"round's time / the same round's {ref} time (a slow round cancels out)"
            )
        self.print_phases(section, jobs)
        self.cleanup(jobs, data)

    def data_dir(self, rows: int, members_order: str | None = None) -> Path:
        name = f"ad-{rows}-s{self.args.seed}-{self.args.order}"
        if members_order and members_order != members_order_of({"order": self.args.order}):
            name += f"-m{members_order}"  # the default order keeps the old directory name
        return BENCH / "data" / name


def describe(path: Path, meta: dict[str, Any]) -> str:
    if not meta:
        return str(path)
    return (
        f"{meta.get('entries_rows', '?'):,} entries ({meta.get('entries_bytes', 0) / 1e9:.2f} GB)"
        f" + {meta.get('members_rows', '?'):,} members"
        f" ({meta.get('members_bytes', 0) / 1e9:.2f} GB), {meta.get('order')},"
        f" members {members_order_of(meta)}"
    )


# ----------------------------------------------------------------------------- metadata


def command_output(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sort": command_output(["sort", "--version"]).splitlines()[:1],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_kib"] = int(line.split()[1])
    except OSError:
        pass
    if importlib.util.find_spec("duckdb") is not None:
        import duckdb

        info["duckdb"] = duckdb.__version__
    return info


def git_info() -> dict[str, Any]:
    commit = command_output(["git", "rev-parse", "--short", "HEAD"]) or "nogit"
    dirty = bool(command_output(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {"commit": commit, "dirty": dirty}


def results_path(directory: Path, commit: str) -> Path:
    stem = f"{dt.date.today().isoformat()}-{commit}"
    path = directory / f"{stem}.json"
    n = 2
    while path.exists():
        path = directory / f"{stem}-{n}.json"
        n += 1
    return path


# ----------------------------------------------------------------------------- main


def check_tools(bench: Bench) -> None:
    if "duckdb" in bench.tools and importlib.util.find_spec("duckdb") is None:
        raise SystemExit(
            "error: the python package 'duckdb' is not installed: "
            "pip install -r bench/requirements.txt, or leave it out with --tools prepsync,sort"
        )
    if "sort" in bench.tools and "GNU" not in command_output(["sort", "--version"]):
        raise SystemExit("error: GNU sort not found on PATH (or leave it out with --tools)")
    if "prepsync" in bench.tools:
        probe = subprocess.run(
            [*bench.prepsync, "prepare", "--help"], capture_output=True, cwd=REPO, check=False
        )
        if probe.returncode:
            raise SystemExit(
                f"error: `{shlex.join(bench.prepsync)} prepare --help` failed "
                f"(status {probe.returncode}): install prepsync (pip install -e .), "
                "pass --prepsync-cmd, or leave it out with --tools sort,duckdb"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rows",
        type=int,
        default=2_000_000,
        help="entries rows of the generated export (default 2000000)",
    )
    ap.add_argument("--data", help="use this export directory instead of generating one")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--order", choices=["shuffled", "sorted"], default="shuffled")
    ap.add_argument(
        "--members-order",
        default="",
        help="comma-separated row orders of the members file, each its own export and "
        f"sections (a sweep): {', '.join(MEMBERS_ORDERS)} (default: gen_ad.py's for --order, "
        "clustered-dn for shuffled); the budget sweep and scaling use the first",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also time dd of the bytes prepsync reads, spills and writes, in the same rounds "
        "(complete sections), and prepsync's time as a multiple of it",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool; the median is kept")
    ap.add_argument(
        "--tools", default=",".join(TOOLS), help="comma-separated subset of prepsync,sort,duckdb"
    )
    ap.add_argument(
        "--memory-budget",
        default="256MiB",
        help="prepsync --memory-budget, and sort -S (default 256MiB)",
    )
    ap.add_argument("--duckdb-memory", default="1GB", help="DuckDB memory_limit (default 1GB)")
    ap.add_argument("--duckdb-threads", type=int, default=2)
    ap.add_argument(
        "--incremental",
        action="store_true",
        help="also time an incremental run on the next day's export",
    )
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="also time 0.25M, 1M, 2M and 4M rows (generated as needed)",
    )
    ap.add_argument(
        "--scaling-rows",
        default=",".join(map(str, SCALING_ROWS)),
        help="comma-separated sizes for --scaling",
    )
    ap.add_argument(
        "--page-cache",
        default="warm",
        help="comma-separated page-cache modes of --scaling's runs, alternating in the same "
        "rounds: warm (inputs cached, the default) and dropped (inputs dropped from the page "
        "cache before each run, read from disk: TOOL-dropped); each run records the kernel's "
        "reclaim and disk counters",
    )
    ap.add_argument(
        "--budget-sweep",
        metavar="BUDGETS",
        help="also time prepsync alone at each of these comma-separated budgets "
        "(e.g. 32MiB,256MiB,1GiB), alternating; ratios are to --memory-budget",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        metavar="N",
        help="untimed rounds of every job before each section's timed rounds (default: 1 for "
        "the budget sweep, 0 for the other sections; 0 for a quick smoke run)",
    )
    ap.add_argument("--config", default=str(BENCH / "config" / "ad.xml"))
    ap.add_argument("--connector", default="AD")
    ap.add_argument(
        "--prepsync-cmd", help="command to run instead of `python -m prepsync` (e.g. prepsync)"
    )
    ap.add_argument(
        "--base-prepsync-cmd",
        help="also time this other prepsync build as tool `base`, alternating with prepsync "
        "(e.g. 'env PYTHONPATH=OLD_CHECKOUT python -P -m prepsync': -P, as the bench runs in "
        "this checkout, which -m would otherwise put first on the path)",
    )
    ap.add_argument(
        "--work-dir",
        default=str(BENCH / "data" / "work"),
        help="where outputs and spill files go (default bench/data/work)",
    )
    ap.add_argument(
        "--keep-work",
        action="store_true",
        help="keep every tool's first-round outputs (WORK/check/SECTION/TOOL), the last run's "
        "(WORK/SECTION) and the baselines",
    )
    ap.add_argument("--results-dir", default=str(BENCH / "results"))
    ap.add_argument(
        "--output", help="results JSON path (default <results-dir>/<date>-<commit>.json)"
    )
    args = ap.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not args.tools or any(t not in TOOLS for t in args.tools):
        ap.error(f"--tools takes a subset of {','.join(TOOLS)}")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        ap.error("--warmup must be >= 0")
    if args.budget_sweep is not None and not args.budget_sweep.strip(", "):
        ap.error("--budget-sweep takes comma-separated budgets, e.g. 32MiB,256MiB,1GiB")
    args.members_order = [o.strip() for o in args.members_order.split(",") if o.strip()]
    if any(o not in MEMBERS_ORDERS for o in args.members_order):
        ap.error(f"--members-order takes a subset of {','.join(MEMBERS_ORDERS)}")
    if args.data and len(args.members_order) > 1:
        ap.error("--data is one export: give at most one --members-order (it is the export's)")
    args.page_cache = [m.strip() for m in args.page_cache.split(",") if m.strip()]
    if not args.page_cache or any(m not in CACHE_MODES for m in args.page_cache):
        ap.error(f"--page-cache takes a subset of {','.join(CACHE_MODES)}")
    if args.floor and "prepsync" not in args.tools:
        ap.error("--floor copies the sizes of prepsync's outputs: keep prepsync in --tools")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    check_tools(bench)
    load_start = os.getloadavg()
    started = time.time()
    try:
        if load_start[0] > 0.5:
            bench.say(f"warning: the machine is not idle (load {load_start[0]:.2f}): noisy figures")
        orders: list[str | None] = list(args.members_order) or [None]
        for members_order in orders:
            # One members order keeps the sections' old names (comparable with older results);
            # several (a sweep) name each section after its order.
            suffix = f"-{members_order}" if len(orders) > 1 else ""
            if args.data:
                data = Path(args.data).resolve()
                meta = dataset_meta(data)
            else:
                data = bench.data_dir(args.rows, members_order)
                meta = ensure_dataset(data, args.rows, args.seed, args.order, members_order)
            bench.complete(data, meta, "complete" + suffix)
            if args.incremental:
                day2 = data.with_name(data.name + "-next")
                bench.incremental(day2, ensure_next_day(data, day2), "incremental" + suffix)
            if members_order is orders[0]:
                first_data, first_meta = data, meta
        data, meta = first_data, first_meta
        if args.budget_sweep:
            budgets = [b.strip() for b in args.budget_sweep.split(",") if b.strip()]
            bench.budget_sweep(data, meta, budgets)
        if args.scaling:
            bench.scaling([int(s) for s in args.scaling_rows.split(",") if s.strip()])
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.keep_work:
        shutil.rmtree(bench.baseline, ignore_errors=True)
        shutil.rmtree(bench.work_root / "check", ignore_errors=True)
    git = git_info()
    results = {
        "schema": 1,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "git": git,
        "machine": machine_info(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "seconds": round(time.time() - started, 1),
        "parameters": {
            "tools": bench.tools,
            "repeat": args.repeat,
            "memory_budget": args.memory_budget,
            "sort_S": sort_size(args.memory_budget),
            "duckdb_memory": args.duckdb_memory,
            "duckdb_threads": args.duckdb_threads,
            "prepsync_cmd": bench.prepsync,
            "base_prepsync_cmd": bench.base_prepsync,
            "config": str(bench.config),
            "connector": args.connector,
            "incremental": args.incremental,
            "members_order": args.members_order,
            "floor": args.floor,
            "scaling": args.scaling,
            "budget_sweep": args.budget_sweep,
            # --warmup as given (None: 1 round for the budget sweep, none elsewhere) and the
            # sweep's rounds as run: --repeat rounded up to a multiple of its budgets.
            "warmup": args.warmup,
            "budget_sweep_rounds": bench.sweep_rounds or None,
            "page_cache": args.page_cache,
            "rss": "ru_maxrss of RUSAGE_CHILDREN in a fresh wrapper per run (largest process)",
        },
        "datasets": bench.datasets,
        "figures": bench.figures,
        "samples": bench.samples,
        "warmup_samples": bench.warmup_samples,
        "checks": bench.checks,
        "prepsync_reports": bench.reports,
        "notes": {"sort": SORT_NOTE, **({"page_cache": CACHE_NOTE} if args.scaling else {})},
    }
    out = Path(args.output) if args.output else results_path(Path(args.results_dir), git["commit"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    bench.say()
    bench.say(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
