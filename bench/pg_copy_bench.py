#!/usr/bin/env python3
"""The PostgreSQL store's initial load in isolation: ways of getting a session's files into
empty tables, timed in one process on one throwaway cluster, rounds alternating the variants
(so a change of the shared machine's load falls on all of them).

Variants (each: a new table in one transaction, the COPY, the commit):

* ``text``: the native reader's checking pass, then the file's bytes through
  ``COPY ... (FORMAT csv)`` (PostgreSQL parses the CSV);
* ``binary``: the native reader checks and encodes each row into binary ``COPY`` in one pass;
* ``binary_key_after``: the same into a table without its primary key, which is added after;
* ``binary_freeze``: ``binary`` with ``COPY ... FREEZE`` (rows written frozen);
* ``binary_parallel``: ``binary``, each table on its own connection at once (two transactions);
* ``binary_freeze_parallel``: ``binary_freeze`` so.

Also ``encode_only``: the reader's pass alone (what the client's side costs).

    python bench/pg_copy_bench.py --agent-dir bench/data/server-work/agent [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
import pgutil  # noqa: E402

from prepsync._upload import UploadReader  # noqa: E402

BLOCK = 1 << 20
TABLES = {"ADExport_entries": ["objectGUID"], "ADExport_members": None}  # None: every column


def reader_for(path: Path) -> tuple[UploadReader, list[str], list[int]]:
    reader = UploadReader(str(path), path.name, ",")
    header = reader.header()
    key = TABLES[path.name.split(".")[0]]
    positions = list(range(len(header))) if key is None else [header.index(k) for k in key]
    reader.configure(positions, True)
    return reader, header, positions


def create(
    connection: psycopg.Connection[Any], name: str, header: list[str], key: list[str] | None
) -> None:
    columns = [sql.SQL('{} text COLLATE "C"').format(sql.Identifier(c)) for c in header]
    if key is not None:
        columns.append(
            sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key)))
        )
    connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    connection.execute(
        sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name), sql.SQL(", ").join(columns))
    )


def load_one(url: str, path: Path, variant: str) -> None:
    reader, header, positions = reader_for(path)
    key = [header[p] for p in positions]
    name = "t_" + path.name.split(".")[0]
    with psycopg.connect(url) as connection:
        create(connection, name, header, None if variant == "binary_key_after" else key)
        columns = sql.SQL(", ").join(map(sql.Identifier, header))
        with connection.cursor() as cursor:
            if variant == "text":
                while reader.check(1 << 16):
                    pass
                statement = sql.SQL(
                    "COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true, FORCE_NULL ({}))"
                ).format(sql.Identifier(name), columns, columns)
                with cursor.copy(statement) as copy, path.open("rb") as stream:
                    while block := stream.read(BLOCK):
                        copy.write(block)
            else:
                freeze = sql.SQL(", FREEZE") if variant == "binary_freeze" else sql.SQL("")
                statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary{})").format(
                    sql.Identifier(name), columns, freeze
                )
                with cursor.copy(statement) as copy:
                    while block := reader.copy_block(BLOCK):
                        copy.write(block)
        if variant == "binary_key_after":
            connection.execute(
                sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                    sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, key))
                )
            )
        connection.commit()
    reader.close()


def run(url: str, paths: list[Path], variant: str) -> float:
    started = time.perf_counter()
    if variant == "encode_only":
        for path in paths:
            reader, _header, _positions = reader_for(path)
            while reader.copy_block(BLOCK):
                pass
            reader.close()
    elif variant in ("binary_parallel", "binary_freeze_parallel"):
        each = variant.removesuffix("_parallel")
        errors: list[BaseException] = []

        def one(path: Path) -> None:
            try:
                load_one(url, path, each)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=one, args=(path,)) for path in paths]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    else:
        for path in paths:
            load_one(url, path, variant)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent-dir", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        default="text,binary,binary_key_after,binary_freeze,binary_parallel,"
        "binary_freeze_parallel,encode_only",
    )
    parser.add_argument("--output")
    args = parser.parse_args()
    paths = [args.agent_dir / f"{table}.sorted.csv" for table in TABLES]
    variants = args.variants.split(",")
    samples: dict[str, list[float]] = {variant: [] for variant in variants}
    with pgutil.admin_url() as admin:
        databases = pgutil.Databases(admin, prefix="prepsync_copybench")
        with databases.database() as url:
            for round_number in range(args.rounds):
                order = variants if round_number % 2 == 0 else variants[::-1]
                for variant in order:
                    seconds = run(url, paths, variant)
                    samples[variant].append(seconds)
                    print(f"round {round_number + 1} {variant}: {seconds:.2f} s", flush=True)
    result: dict[str, Any] = {
        "files": {path.name: path.stat().st_size for path in paths},
        "rounds": args.rounds,
        "load_average_end": os.getloadavg(),
        "samples_s": samples,
        "median_s": {variant: round(statistics.median(v), 3) for variant, v in samples.items()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
