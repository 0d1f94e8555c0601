"""The PostgreSQL store's binary COPY paths (a load into an empty table, a delta's staging):
what the native reader encodes and checks in one pass gives the verdicts and messages of the
SQLite store, whichever of the reader and PostgreSQL finds a problem first."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from serverutil import csv_bytes
from storeutil import StoreHarness

from prepsync.config import TableSpec, Thresholds
from prepsync.errors import ConfigError
from prepsync.protocol import DONE, FAILED
from prepsync.server.apply import apply_session
from prepsync.server.pgstore import PgBackend, PgWork

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


def load_tables(postgres_url: str) -> list[str]:
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'prepsync_load'"
        ).fetchall()
    return [name for (name,) in rows]


def test_a_table_loaded_on_its_own_connection_is_swapped_in_with_the_session(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[str] = []
    take = PgWork._take_ahead

    def counted(work: PgWork, table: Any, ahead: Any, counter: Any) -> None:
        taken.append(table.name)
        take(work, table, ahead, counter)

    monkeypatch.setattr(PgWork, "_take_ahead", counted)
    # P (the second table) is loaded ahead on a connection of its own; it lands in the
    # connector's schema, named and keyed as a table the session's connection creates, and
    # nothing stays in the loading schema.
    rows = [("1", "a", ""), ("2", "", "1")]
    (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], rows))
    (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], [("x", "1"), ("y", "2")]))
    stores = both(tmp_path, postgres_url)
    try:
        outcomes = [outcome_of(store, "initial", tmp_path, NAMES) for store in stores]
        assert outcomes[0][0] == DONE
        assert outcomes[1] == outcomes[0]
        for table, spec in (("T", SPEC), ("P", PAIR)):
            served = [store.resources("C", table, spec.columns) for store in stores]
            assert served[0] == served[1]
        assert load_tables(postgres_url) == []
        assert taken == ["P"]
        with psycopg.connect(postgres_url) as connection:
            names = connection.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                """WHERE i.indrelid IN ('"C"."T"'::regclass, '"C"."P"'::regclass) """
                "AND i.indisprimary ORDER BY 1"
            ).fetchall()
            assert names == [("P_pkey",), ("T_pkey",)]
    finally:
        for store in stores:
            store.close()


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        (b"a,b\nx,1\nx,1\n", "P.sorted.csv, line 3: duplicate key"),
        (b"a,c\nx,1\n", "P.sorted.csv: header differs from the kept columns"),
    ],
)
def test_a_table_loaded_ahead_fails_the_session_as_on_sqlite_and_leaves_nothing(
    tmp_path: Path, postgres_url: str, members: bytes, reason: str
) -> None:
    (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], [("1", "a", "")]))
    (tmp_path / "P.sorted.csv").write_bytes(members)
    stores = both(tmp_path, postgres_url)
    try:
        outcomes = [outcome_of(store, "initial", tmp_path, NAMES) for store in stores]
        assert outcomes[0][0] == FAILED
        assert (outcomes[0][1] or "").startswith(reason)
        assert outcomes[1] == outcomes[0]
        assert stores[1].resources("C", "T", SPEC.columns) == b"id,v,p\n"
        assert load_tables(postgres_url) == []
    finally:
        for store in stores:
            store.close()


def test_a_load_ahead_left_by_a_crash_is_dropped_by_the_next_session(
    tmp_path: Path, postgres_url: str
) -> None:
    from prepsync.server.pgstore import LOAD_SCHEMA, _load_prefix

    harness = StoreHarness(tmp_path / "pg", postgres_url)
    try:
        left = f"{_load_prefix('C')}_0123456789abcdef"
        with psycopg.connect(postgres_url) as connection:
            connection.execute(f'CREATE TABLE {LOAD_SCHEMA}."{left}" (a text)')
            connection.execute(f'CREATE TABLE {LOAD_SCHEMA}."other" (a text)')  # not C's
        (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], [("1", "a", "")]))
        (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], [("x", "1")]))
        assert outcome_of(harness, "initial", tmp_path, NAMES)[0] == DONE
        assert load_tables(postgres_url) == ["other"]
    finally:
        harness.close()


def test_a_session_applied_again_after_a_crash_is_not_held_up_by_its_first_load_ahead(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first attempt dies after its load ahead committed, before the session's commit (and
    # before its own clean-up, which a SIGKILL skips): the same session applied again drops
    # that table and loads its own.
    (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], [("1", "a", "")]))
    (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], [("x", "1")]))
    harness = StoreHarness(tmp_path / "pg", postgres_url)
    try:
        session = harness.claimed("C", "initial", NAMES)

        def killed(work: PgWork, session: Any, summary: Any) -> None:
            raise psycopg.OperationalError("the server was killed")

        monkeypatch.setattr(PgWork, "commit_applied", killed)
        monkeypatch.setattr(PgWork, "finish", lambda work, committed: None)
        with pytest.raises(psycopg.OperationalError):
            apply_session(harness.store, session, TABLES, tmp_path, None, time.monotonic())
        assert len(load_tables(postgres_url)) == 1
        monkeypatch.undo()
        outcome = apply_session(harness.store, session, TABLES, tmp_path, None, time.monotonic())
        assert outcome.state == DONE
        assert load_tables(postgres_url) == []
        assert harness.resources("C", "P", PAIR.columns) == b"a,b\nx,1\n"
    finally:
        harness.db.release(session)
        harness.close()


@pytest.mark.parametrize("connector", ["prepsync", "prepsync_load", "pg_x"])
def test_the_stores_own_schemas_are_not_connector_names(
    tmp_path: Path, postgres_url: str, connector: str
) -> None:
    backend = PgBackend(postgres_url, tmp_path)
    with pytest.raises(ConfigError, match="cannot use it as a schema name"):
        backend.check_tables({connector: [SPEC]})
    backend.check_tables({"C": [SPEC]})
