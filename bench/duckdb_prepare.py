#!/usr/bin/env python3
"""The DuckDB side of the benchmark: prepsync's cleansing (and delta) written as SQL.

``python bench/duckdb_prepare.py SPEC.json`` where SPEC.json is written by ``bench/run.py``::

    {"mode": "complete" | "incremental", "work": DIR, "memory_limit": "1GB", "threads": 2,
     "tables": [{"name": T, "source": CSV, "columns": [...], "keys": [...],
                 "baseline": CSV or null}]}

For each table: read the CSV as text, keep ``columns`` (in source header order), drop rows
with a null key, keep the first row of each key in file order, sort by key and write
``DIR/T.sorted.csv``. In incremental mode, also FULL OUTER JOIN the baseline with that new
file into ``DIR/T.sorted.delta.csv`` (``command`` + columns; insert/update/delete).
Unlike prepsync it writes no ``.nullpk.csv`` / ``.duplicates.csv`` files and does not
replace the baseline. Prints one JSON line of row counts on stdout.

"First row in file order": DuckDB's CSV reader has no row-number column, so the row number
is ``row_number() OVER ()`` over the scan, which DuckDB computes with its streaming window
in scan order while ``preserve_insertion_order`` is on (the default). ``bench/run.py``
checks the outputs against prepsync's, byte for byte, which would catch a difference.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

try:
    import duckdb
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit(
        "error: the python package 'duckdb' is not installed; pip install -r bench/requirements.txt"
    )


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def read_csv(path: str) -> str:
    return (
        f"read_csv({literal(path)}, all_varchar = true, header = true, delim = ',', "
        "quote = '\"', escape = '\"')"
    )


CSV_OUT = "(FORMAT csv, HEADER true, DELIMITER ',', QUOTE '\"', ESCAPE '\"')"


def cleanse_sql(table: dict[str, Any], out: str) -> str:
    cols = ", ".join(ident(c) for c in table["columns"])
    keys = ", ".join(ident(k) for k in table["keys"])
    not_null = " AND ".join(f"coalesce({ident(k)}, '') <> ''" for k in table["keys"])
    return f"""
COPY (
    SELECT {cols} FROM (
        SELECT {cols}, row_number() OVER () AS __row FROM {read_csv(table["source"])}
    )
    WHERE {not_null}
    QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY __row) = 1
    ORDER BY {keys}
) TO {literal(out)} {CSV_OUT}"""


def delta_sql(table: dict[str, Any], new: str, out: str) -> str:
    keys: list[str] = table["keys"]
    values = [c for c in table["columns"] if c not in keys]
    picked = ", ".join(
        f"CASE WHEN n.__in IS NULL THEN o.{ident(c)} ELSE n.{ident(c)} END AS {ident(c)}"
        for c in table["columns"]
    )
    on = " AND ".join(f"o.{ident(k)} = n.{ident(k)}" for k in keys)
    changed = " OR ".join(f"o.{ident(c)} IS DISTINCT FROM n.{ident(c)}" for c in values)
    order = ", ".join(f"coalesce(n.{ident(k)}, o.{ident(k)})" for k in keys)
    return f"""
COPY (
    SELECT CASE WHEN o.__in IS NULL THEN 'insert' WHEN n.__in IS NULL THEN 'delete'
                ELSE 'update' END AS command,
           {picked}
    FROM (SELECT *, true AS __in FROM {read_csv(table["baseline"])}) AS o
    FULL OUTER JOIN (SELECT *, true AS __in FROM {read_csv(new)}) AS n ON {on}
    WHERE o.__in IS NULL OR n.__in IS NULL {"OR " + changed if changed else ""}
    ORDER BY {order}
) TO {literal(out)} {CSV_OUT}"""


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    work = Path(spec["work"])
    con = duckdb.connect()
    con.execute(f"SET memory_limit = {literal(spec.get('memory_limit', '1GB'))}")
    con.execute(f"SET threads = {int(spec.get('threads', 2))}")
    con.execute(f"SET temp_directory = {literal(str(work / 'duckdb.tmp'))}")
    con.execute("SET preserve_insertion_order = true")
    counts: dict[str, dict[str, Any]] = {}
    for table in spec["tables"]:
        t0 = time.perf_counter()
        sorted_csv = str(work / f"{table['name']}.sorted.csv")
        row = con.execute(cleanse_sql(table, sorted_csv)).fetchone()
        info: dict[str, Any] = {"sorted": row[0] if row else None}
        if spec["mode"] == "incremental":
            delta = str(work / f"{table['name']}.sorted.delta.csv")
            row = con.execute(delta_sql(table, sorted_csv, delta)).fetchone()
            info["delta"] = row[0] if row else None
        info["seconds"] = round(time.perf_counter() - t0, 3)
        counts[table["name"]] = info
    print(json.dumps({"duckdb": duckdb.__version__, "tables": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
