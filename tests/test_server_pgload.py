"""The PostgreSQL store's binary COPY paths (a load into an empty table, a delta's staging):
what the native reader encodes and checks in one pass gives the verdicts and messages of the
SQLite store, whichever of the reader and PostgreSQL finds a problem first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from serverutil import csv_bytes
from storeutil import StoreHarness

from prepsync.config import TableSpec, Thresholds
from prepsync.protocol import DONE, FAILED

pytestmark = pytest.mark.postgres

SPEC = TableSpec("T", ("id", "v", "p"), ("id",), Thresholds())
PAIR = TableSpec("P", ("a", "b"), None, Thresholds())
TABLES = {"t": SPEC, "p": PAIR}
NAMES = ["T.sorted.csv", "P.sorted.csv"]


def both(tmp_path: Path, postgres_url: str) -> list[StoreHarness]:
    return [
        StoreHarness(tmp_path / "sqlite", None),
        StoreHarness(tmp_path / "pg", postgres_url),
    ]


def outcome_of(harness: StoreHarness, mode: str, directory: Path, names: list[str]) -> Any:
    outcome = harness.apply("C", mode, directory, names, TABLES)
    summary = dict(outcome.summary or {})
    summary.pop("apply_seconds", None)
    return outcome.state, outcome.reason, summary


def test_a_bad_line_after_a_row_postgresql_refuses_is_named_as_sqlite_names_it(
    tmp_path: Path, postgres_url: str
) -> None:
    # PostgreSQL refuses line 2 (a NUL) while the reader is still encoding (the rows after it
    # fill several COPY blocks); the reader's problem on the last line is what the session
    # fails with, on both stores.
    filler = [(f"b{number:07d}", "v" * 100, "") for number in range(30_000)]
    rows = [("a", "x\x00y", ""), *filler, ("a0", "", "")]
    (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], rows))
    (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], []))
    stores = both(tmp_path, postgres_url)
    try:
        outcomes = [outcome_of(store, "initial", tmp_path, NAMES) for store in stores]
        assert outcomes[0][:2] == (FAILED, "T.sorted.csv, line 30003: not in key order")
        assert outcomes[1] == outcomes[0]
        assert [store.resources("C", "T", SPEC.columns) for store in stores] == [b"id,v,p\n"] * 2
    finally:
        for store in stores:
            store.close()


def test_a_load_into_a_kept_empty_table_and_into_a_new_one(
    tmp_path: Path, postgres_url: str
) -> None:
    # Day 1 creates the table (its rows written frozen), day 2 empties it, day 3 loads into the
    # table kept from before (not created in its transaction: no FREEZE there).
    stores = both(tmp_path, postgres_url)
    days: list[list[tuple[str, str, str]]] = [
        [("1", "a", ""), ("2", "", "1"), ("3", 'c,"d"\n', "2")],
        [],
        [("0", "é", "x"), ("2", "b", "")],
    ]
    try:
        for day, rows in enumerate(days):
            directory = tmp_path / f"day{day}"
            directory.mkdir()
            (directory / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], rows))
            (directory / "P.sorted.csv").write_bytes(
                csv_bytes(["a", "b"], [(key, value or "-") for key, value, _p in rows])
            )
            outcomes = [outcome_of(store, "complete", directory, NAMES) for store in stores]
            assert outcomes[0][0] == DONE, outcomes[0]
            assert outcomes[1] == outcomes[0]
            for table, spec in (("T", SPEC), ("P", PAIR)):
                served = [store.resources("C", table, spec.columns) for store in stores]
                assert served[0] == served[1]
        assert stores[1].resources("C", "T", SPEC.columns) == b"id,v,p\n0,\xc3\xa9,x\n2,b,\n"
        with psycopg.connect(postgres_url) as connection:
            # Empty values are NULL, not '' (binary COPY sends them as NULL).
            row = connection.execute('SELECT count(*) FROM "C"."T" WHERE p IS NULL').fetchone()
            assert row == (1,)
    finally:
        for store in stores:
            store.close()


@pytest.mark.parametrize(
    "delta",
    [
        b"command,id,v,p\ninsert,9,a\n",  # a field short
        b"command,id,v,p\ninsert,9,a\rb,\n",  # a CR outside quotes
        b'command,id,v,p\ninsert,9,"a\n',  # an unterminated quote
        b"command,id,v,p\ninsert,9,\xff,\n",  # not UTF-8
        b"command,id,v,p\ninsert,9,a\x00b,\n",  # PostgreSQL refuses a NUL
    ],
)
def test_a_delta_the_reader_or_postgresql_refuses_fails_as_on_sqlite(
    tmp_path: Path, postgres_url: str, delta: bytes
) -> None:
    (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], [("1", "a", "")]))
    (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], []))
    (tmp_path / "T.sorted.delta.csv").write_bytes(delta)
    stores = both(tmp_path, postgres_url)
    try:
        for store in stores:
            assert outcome_of(store, "initial", tmp_path, NAMES)[0] == DONE
        outcomes = [
            outcome_of(store, "incremental", tmp_path, ["T.sorted.delta.csv"]) for store in stores
        ]
        if b"\x00" in delta:  # SQLite stores it; PostgreSQL's text cannot hold it
            assert outcomes[0][0] == DONE
            assert outcomes[1][0] == FAILED
            assert (outcomes[1][1] or "").startswith("T.sorted.delta.csv: PostgreSQL refused it")
        else:
            assert outcomes[0][0] == FAILED
            assert outcomes[1] == outcomes[0]
        served = [store.resources("C", "T", SPEC.columns) for store in stores]
        assert served[1] == b"id,v,p\n1,a,\n"
    finally:
        for store in stores:
            store.close()
