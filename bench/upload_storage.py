#!/usr/bin/env python3
"""Where several server processes keep uploads: files in a shared data directory, or rows in
the PostgreSQL database they share. Times one entries file of the bench export both ways.

The server keeps files (docs/DESIGN.md, "Uploads stay files"); this measures what the other
choice would cost. Each way takes the file in 8 MiB chunks, each chunk made durable before the
next (as an upload's chunk is acknowledged), then reads it back once (as the apply does):

- **file**: written and ``fsync``\\ ed chunk by chunk, read back.
- **database**: one ``bytea`` row per chunk, each committed (``synchronous_commit`` on), read
  back row by row; once with PostgreSQL's default storage (the chunk is compressed), once with
  ``STORAGE EXTERNAL`` (not compressed). The WAL each writes is measured too: it goes to every
  standby and archive, only to be deleted after the apply.

    python bench/upload_storage.py [--database URL|auto] [--rows 500000 | --file CSV]
        [--repeat 3] [--output FILE]

``--database auto`` (the default) starts a throwaway cluster as the tests do (tests/pgutil.py,
durable settings, ``wal_level=replica``). The file is ``bench/gen_ad.py``'s entries export
(the one ``server_bench.py`` uses), or ``--file``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
import pgutil  # noqa: E402  (the tests' throwaway PostgreSQL cluster)
from run import ensure_dataset, git_info, machine_info, results_path  # noqa: E402

CHUNK = 8 << 20


def seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def as_file(source: Path, target: Path) -> dict[str, float]:
    def write() -> None:
        with source.open("rb") as incoming, target.open("wb") as stored:
            while block := incoming.read(CHUNK):
                stored.write(block)
                stored.flush()
                os.fsync(stored.fileno())

    def read() -> None:
        with target.open("rb") as stored:
            while stored.read(CHUNK):
                pass

    figures = {"write_s": seconds(write), "read_s": seconds(read)}
    target.unlink()
    return figures


def in_database(source: Path, url: str, compressed: bool) -> dict[str, float]:
    session = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE upload_chunks (session uuid, seq int, bytes bytea, "
            "PRIMARY KEY (session, seq))"
        )
        if not compressed:
            connection.execute("ALTER TABLE upload_chunks ALTER bytes SET STORAGE EXTERNAL")

        def lsn() -> Any:
            row = connection.execute("SELECT pg_current_wal_lsn()").fetchone()
            assert row is not None
            return row[0]

        def write() -> None:
            with source.open("rb") as incoming:
                sequence = 0
                while block := incoming.read(CHUNK):
                    connection.execute(
                        "INSERT INTO upload_chunks VALUES (%s, %s, %s)", (session, sequence, block)
                    )
                    sequence += 1

        def read() -> None:
            with connection.cursor() as cursor:
                for row in cursor.stream(
                    "SELECT bytes FROM upload_chunks WHERE session = %s ORDER BY seq", (session,)
                ):
                    assert row[0]

        before = lsn()
        write_s = seconds(write)
        wal = connection.execute("SELECT pg_wal_lsn_diff(%s, %s)", (lsn(), before)).fetchone()
        stored = connection.execute("SELECT pg_total_relation_size('upload_chunks')").fetchone()
        assert wal is not None and stored is not None
        read_s = seconds(read)
        connection.execute("DROP TABLE upload_chunks")
    return {
        "write_s": write_s,
        "read_s": read_s,
        "wal_mib": float(wal[0]) / (1 << 20),
        "stored_mib": stored[0] / (1 << 20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="auto", help="a postgresql:// URL, or auto")
    parser.add_argument("--rows", type=int, default=500_000, help="entries of the export")
    parser.add_argument("--file", type=Path, help="time this file instead of the export's")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, help="results JSON (default: bench/results/)")
    args = parser.parse_args()
    if args.file is None:
        export = BENCH / "data" / f"ad-{args.rows}-s1-shuffled"
        ensure_dataset(export, args.rows, 1, "shuffled")
        args.file = export / "ADExport_entries.csv"
    source: Path = args.file
    scratch = BENCH / "data" / "upload-storage.tmp"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[dict[str, float]]] = {"file": [], "db": [], "db_uncompressed": []}
    with contextlib.ExitStack() as stack:
        admin = (
            stack.enter_context(pgutil.admin_url()) if args.database == "auto" else args.database
        )
        databases = pgutil.Databases(admin, prefix="prepsync_bench")
        for round_number in range(args.repeat):
            url = stack.enter_context(databases.database(f"u{round_number}"))
            samples["file"].append(as_file(source, scratch))
            samples["db"].append(in_database(source, url, compressed=True))
            samples["db_uncompressed"].append(in_database(source, url, compressed=False))
    figures: dict[str, float] = {"file_mib": source.stat().st_size / (1 << 20)}
    for way, runs in samples.items():
        for measure in runs[0]:
            figures[f"{way}_{measure}"] = round(statistics.median(r[measure] for r in runs), 2)
    print(json.dumps(figures, indent=2))
    git = git_info()
    output = args.output or results_path(BENCH / "results", f"upload-storage-{git['commit']}")
    output.write_text(
        json.dumps(
            {
                "figures": figures,
                "samples": samples,
                "git": git,
                "file": str(source),
                "machine": machine_info(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
