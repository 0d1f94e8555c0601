"""The PostgreSQL store against the SQLite one, and what only PostgreSQL does: several processes
claiming from one queue, one data directory, queryable tables."""

from __future__ import annotations

import itertools
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverutil import csv_bytes
from storeutil import StoreHarness

from prepsync.config import LinkThresholds, TableSpec, Thresholds
from prepsync.errors import ConfigError, DataError
from prepsync.protocol import DONE, FAILED, PROCESSING, QUEUED
from prepsync.server import pgstore
from prepsync.server.pgstore import PgBackend, PgSessionDatabase
from prepsync.server.thresholds import Association, ConnectorLimits, TableLimits

pytestmark = pytest.mark.postgres

SPEC = TableSpec("T", ("id", "v", "p"), ("id",), Thresholds())
PAIR = TableSpec("P", ("a", "b"), None, Thresholds())
TABLES = {"t": SPEC, "p": PAIR}
LIMITS = ConnectorLimits(
    "C",
    {
        "t": TableLimits(
            (("T", Thresholds()),), (Association("T_parent", "p", "id", LinkThresholds()),)
        ),
        "p": TableLimits((), (Association("P_pair", "a", "b", LinkThresholds()),)),
    },
    None,
)

# No NUL: PostgreSQL's text cannot hold it (a session carrying one fails there, see below).
keys = st.text(st.sampled_from(["a", "b", "é", "中", ",", '"', "\n", " "]), min_size=1, max_size=3)
values = st.one_of(
    st.text(st.sampled_from(["x", " ", ",", '"', "\r", "\n", "é", "\\"]), max_size=3),
    st.just("\\."),  # COPY's end-of-data marker, as a value
)


def ordered(rows: dict[str, tuple[str, str]]) -> list[tuple[str, str, str]]:
    return [(key, *rows[key]) for key in sorted(rows, key=lambda key: key.encode("utf-8"))]


def summary_of(outcome: Any) -> tuple[str, str | None, Any]:
    summary = dict(outcome.summary)
    summary.pop("apply_seconds", None)
    return outcome.state, outcome.reason, summary


def review(harness: StoreHarness, mode: str, directory: Path, names: list[str]) -> list[Any]:
    """Every change of a session the harness has not applied (the review endpoint's diff)."""
    session = harness.queued("C", mode, names)
    found: list[Any] = []
    for name in names:
        spec = SPEC if name.startswith("T.") else PAIR
        try:
            with harness.backend.review(session, spec, directory / name, None) as diff:
                found.append((diff.header, [change[:3] + change[4:] for change in diff.changes]))
        except DataError as error:  # a bad delta: the review says why, as the apply will
            found.append(str(error))
    assert harness.db.cancel(session.id, "reviewed only")
    return found


_runs = itertools.count()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_random_sessions_give_the_same_outcomes_rows_and_reviews_on_both_stores(
    postgres_url: str, data: st.DataObject
) -> None:
    """Complete loads (columns in either order), deltas (with keys changed twice, bad
    commands, inserts of stored keys): same verdict, counts, stored CSV and review."""
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        run = next(_runs)
        # One PostgreSQL database for every example: each its own data directory's id.
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute("DROP SCHEMA IF EXISTS prepsync CASCADE")
            connection.execute('DROP SCHEMA IF EXISTS "C" CASCADE')
        stores = [StoreHarness(root / "sqlite", None), StoreHarness(root / "pg", postgres_url)]
        try:
            for step in range(data.draw(st.integers(1, 5), "steps")):
                directory = root / f"{run}-{step}"
                directory.mkdir()
                if step == 0 or data.draw(st.booleans(), "complete"):
                    mode = "complete"
                    model = data.draw(
                        st.dictionaries(keys, st.tuples(values, values), max_size=8), "rows"
                    )
                    pairs = data.draw(st.sets(st.tuples(keys, keys), max_size=6), "pairs")
                    swapped = data.draw(st.booleans(), "swapped")
                    rows = ordered(model)
                    header = ["id", "v", "p"]
                    if swapped:  # another column order: the stored table is rewritten
                        header = ["p", "id", "v"]
                        rows = [(p, key, v) for key, v, p in rows]
                    (directory / "T.sorted.csv").write_bytes(csv_bytes(header, rows))
                    pair_rows = sorted(pairs, key=lambda row: [v.encode() for v in row])
                    (directory / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], pair_rows))
                    names = ["T.sorted.csv", "P.sorted.csv"]
                else:
                    mode = "incremental"
                    commands = data.draw(
                        st.lists(
                            st.tuples(
                                st.sampled_from(["insert", "update", "delete", "merge", "bad"]),
                                keys,
                                values,
                                values,
                            ),
                            max_size=6,
                        ),
                        "commands",
                    )
                    commands.sort(key=lambda row: row[1].encode("utf-8"))
                    delta = csv_bytes(["command", "id", "v", "p"], commands)
                    (directory / "T.sorted.delta.csv").write_bytes(delta)
                    names = ["T.sorted.delta.csv"]
                reviews = [review(store, mode, directory, names) for store in stores]
                assert reviews[0] == reviews[1]
                outcomes = [
                    summary_of(store.apply("C", mode, directory, names, TABLES, LIMITS))
                    for store in stores
                ]
                assert outcomes[0] == outcomes[1]
                for table, spec in (("T", SPEC), ("P", PAIR)):
                    served = [store.resources("C", table, spec.columns) for store in stores]
                    assert served[0] == served[1]
        finally:
            for store in stores:
                store.close()


def test_the_bulk_and_row_by_row_deltas_agree(tmp_path: Path, postgres_url: str) -> None:
    harness = StoreHarness(tmp_path / "data", postgres_url)
    try:
        rows = [(f"{n:03d}", f"v{n}", "") for n in range(50)]
        (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], rows))
        (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], []))
        outcome = harness.apply("C", "initial", tmp_path, ["T.sorted.csv", "P.sorted.csv"], TABLES)
        assert outcome.state == DONE
        # Without a key twice: the bulk path; 001 twice: row by row (each sees the one before).
        delta = [("merge", "000", "m", ""), ("insert", "100", "n", "x"), ("delete", "002", "", "")]
        for extra in ([], [("update", "001", "u1", ""), ("update", "001", "u2", "")]):
            commands = sorted(delta + extra, key=lambda row: row[1])
            delta_file = tmp_path / "T.sorted.delta.csv"
            delta_file.write_bytes(csv_bytes(["command", "id", "v", "p"], commands))
            outcome = harness.apply("C", "incremental", tmp_path, [delta_file.name], TABLES)
            assert outcome.state == DONE, outcome.reason
            delta = [
                ("update", "000", "m2", ""),
                ("delete", "100", "", ""),
                ("merge", "002", "b", ""),
            ]
        served = harness.resources("C", "T", SPEC.columns).decode()
        assert served.splitlines()[:4] == ["id,v,p", "000,m2,", "001,u2,", "002,b,"]
        assert "100," not in served
    finally:
        harness.close()


def test_the_bulk_and_row_by_row_deltas_count_links_as_sqlite_does(
    tmp_path: Path, postgres_url: str
) -> None:
    """A delta that changes, removes and adds pairs: PostgreSQL's aggregate (no key twice) and
    its row-by-row path (a key twice) count the links SQLite's diff counts."""
    stores = [StoreHarness(tmp_path / "sqlite", None), StoreHarness(tmp_path / "pg", postgres_url)]
    try:
        rows = [(f"{n:03d}", f"v{n}", "" if n % 2 else "root") for n in range(6)]
        (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], rows))
        (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], []))
        names = ["T.sorted.csv", "P.sorted.csv"]
        for store in stores:
            assert store.apply("C", "initial", tmp_path, names, TABLES, LIMITS).state == DONE
        # 000 root -> other: one deleted, one inserted; 001 "" -> x: inserted; 002 deleted
        # with its link; 003 merged without a pair; 004 unchanged pair; 100 a new link.
        delta = [
            ("update", "000", "v", "other"),
            ("update", "001", "v", "x"),
            ("delete", "002", "", ""),
            ("merge", "003", "m", ""),
            ("update", "004", "w", "root"),
            ("insert", "100", "n", "y"),
        ]
        expected = {"T_parent": {"inserted": 3, "deleted": 2}}
        for twice in ([], [("update", "005", "a", "z"), ("update", "005", "b", "")]):
            commands = sorted(delta + twice, key=lambda row: row[1])
            delta_file = tmp_path / "T.sorted.delta.csv"
            delta_file.write_bytes(csv_bytes(["command", "id", "v", "p"], commands))
            outcomes = [
                summary_of(
                    store.apply("C", "incremental", tmp_path, [delta_file.name], TABLES, LIMITS)
                )
                for store in stores
            ]
            assert outcomes[0] == outcomes[1]
            assert outcomes[1][0] == DONE
            assert outcomes[1][2]["tables"]["T"]["links"] == expected
            # The next delta undoes this one, and 005 gains a pair and loses it (one inserted,
            # one deleted: each command counts against the one before).
            delta = [
                ("update", "000", "v", "root"),
                ("update", "001", "v", ""),
                ("insert", "002", "", "root"),
                ("merge", "003", "m", ""),
                ("update", "004", "w", "root"),
                ("delete", "100", "", ""),
            ]
            expected = {"T_parent": {"inserted": 3, "deleted": 4}}
    finally:
        for store in stores:
            store.close()


def test_a_nul_in_a_value_fails_the_session_with_a_reason(
    tmp_path: Path, postgres_url: str
) -> None:
    harness = StoreHarness(tmp_path / "data", postgres_url)
    try:
        (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], [("a", "x\x00y", "")]))
        (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], []))
        outcome = harness.apply("C", "initial", tmp_path, ["T.sorted.csv", "P.sorted.csv"], TABLES)
        assert outcome.state == FAILED
        assert (outcome.reason or "").startswith("T.sorted.csv: PostgreSQL refused it: ")
        assert harness.resources("C", "T", SPEC.columns) == b"id,v,p\n"
    finally:
        harness.close()


def test_a_key_too_long_for_an_index_fails_the_session_not_the_store(
    tmp_path: Path, postgres_url: str
) -> None:
    # PostgreSQL's B-tree holds keys of about 2.7 kB: a longer one is the session's problem
    # (failed, with a reason), not a store error to retry for ever.
    harness = StoreHarness(tmp_path / "data", postgres_url)
    try:
        # Incompressible (PostgreSQL compresses index entries): 9 kB of seeded random CJK.
        chosen = random.Random(4).choices(range(0x4E00, 0x9FFF), k=3000)
        long_key = "".join(map(chr, chosen))
        (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], [(long_key, "", "")]))
        (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], []))
        outcome = harness.apply("C", "initial", tmp_path, ["T.sorted.csv", "P.sorted.csv"], TABLES)
        assert outcome.state == FAILED
        assert (outcome.reason or "").startswith("T.sorted.csv: PostgreSQL refused it: ")
        assert harness.resources("C", "T", SPEC.columns) == b"id,v,p\n"
    finally:
        harness.close()


def test_resource_tables_are_plain_sql_tables_in_key_order(
    tmp_path: Path, postgres_url: str
) -> None:
    harness = StoreHarness(tmp_path / "data", postgres_url)
    try:
        rows = [("b", "", "a"), ("a", 'x,"y"', ""), ("é", "z", "a"), ("ab", "w", "b")]
        ordered_rows = sorted(rows, key=lambda row: row[0].encode())
        (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], ordered_rows))
        (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], [("x", "y")]))
        harness.apply("C", "initial", tmp_path, ["T.sorted.csv", "P.sorted.csv"], TABLES)
        with psycopg.connect(postgres_url) as connection:
            selected = connection.execute('SELECT id, v, p FROM "C"."T" ORDER BY id').fetchall()
            assert selected == [
                ("a", 'x,"y"', None),
                ("ab", "w", "b"),
                ("b", None, "a"),
                ("é", "z", "a"),
            ]
            key = connection.execute(
                "SELECT a.attname, a.attcollation::regcollation::text FROM pg_index i "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                """WHERE i.indrelid = '"C"."T"'::regclass AND i.indisprimary"""
            ).fetchall()
            assert key == [("id", '"C"')]
            pair_key = connection.execute(
                """SELECT count(*) FROM pg_index i WHERE i.indrelid = '"C"."P"'::regclass """
                "AND i.indisprimary AND i.indnatts = 2"
            ).fetchone()
            assert pair_key == (1,)
    finally:
        harness.close()


# ----------------------------------------------------------------------- several processes


def queue(postgres_url: str, tmp_path: Path, *sessions: tuple[str, str]) -> list[str]:
    """Queued sessions (connector, mode) in this order; their ids."""
    PgBackend(postgres_url, tmp_path)
    db = PgSessionDatabase(postgres_url)
    ids = []
    try:
        for number, (connector, mode) in enumerate(sessions):
            session_id = f"00000000-0000-4000-8000-{number:012d}"
            db.open(connector, f"agent-{connector}", mode, session_id, "client")
            assert db.commit(session_id, [])
            ids.append(session_id)
    finally:
        db.close()
    return ids


def test_workers_of_several_processes_take_each_connector_in_order(
    tmp_path: Path, postgres_url: str
) -> None:
    a1, b1, a2 = queue(
        postgres_url, tmp_path, ("A", "incremental"), ("B", "incremental"), ("A", "incremental")
    )
    first, second = PgSessionDatabase(postgres_url), PgSessionDatabase(postgres_url)
    try:
        claimed = first.claim_next()
        assert claimed is not None and claimed.id == a1
        # A is being applied by the first: its next session waits, B's goes to the second.
        other = second.claim_next()
        assert other is not None and other.id == b1
        assert second.claim_next() is None
        first.finish(a1, DONE, None, None)
        first.release(claimed)
        after = second.claim_next()
        assert after is not None and after.id == a2
        second.release(other)
        second.release(after)
    finally:
        first.close()
        second.close()


def test_a_claim_and_an_opening_that_cancels_its_session_do_not_deadlock(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker claiming a queued session (its row locked, its UPDATE to come) while a complete
    session opening in another process cancels the connector's sessions: one waits for the
    other. It was a deadlock that PostgreSQL ended by failing one of them (the opening then
    answered 500): the opening held the table and waited for the row, the claim held the row
    and waited for the table."""
    import threading

    (queued,) = queue(postgres_url, tmp_path, ("A", "incremental"))
    worker, opener = PgSessionDatabase(postgres_url), PgSessionDatabase(postgres_url)
    inside, go_on = threading.Event(), threading.Event()
    try_lock = PgSessionDatabase._try_lock

    def paused_try_lock(self: PgSessionDatabase, connector: str) -> bool:
        if self is worker:  # between the claim's row lock and its UPDATE
            inside.set()
            assert go_on.wait(30)
        return try_lock(self, connector)

    monkeypatch.setattr(PgSessionDatabase, "_try_lock", paused_try_lock)
    outcomes: dict[str, Any] = {}

    def run(name: str, action: Any) -> threading.Thread:
        def target() -> None:
            try:
                outcomes[name] = action()
            except Exception as error:  # reported below
                outcomes[name] = error

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    try:
        claiming = run("claim", worker.claim_next)
        assert inside.wait(30)
        new = "00000000-0000-4000-8000-00000000ffff"
        opening = run("open", lambda: opener.open("A", "agent-A", "complete", new, "client"))
        with psycopg.connect(postgres_url, autocommit=True) as watcher:
            deadline = time.monotonic() + 30
            while not watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'prepsync' "
                "AND wait_event_type = 'Lock'"
            ).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the opening never waited"
                time.sleep(0.01)
        go_on.set()
        claiming.join(30)
        opening.join(30)
        claimed, cancelled = outcomes["claim"], outcomes["open"]
        assert not isinstance(claimed, Exception), claimed
        assert not isinstance(cancelled, Exception), cancelled
        # The claim went first: the session is being applied, not cancelled under it.
        assert claimed is not None and claimed.id == queued
        assert cancelled == []
        worker.release(claimed)
    finally:
        go_on.set()
        worker.close()
        opener.close()


def test_a_dead_workers_session_is_queued_again_by_another(
    tmp_path: Path, postgres_url: str
) -> None:
    (only,) = queue(postgres_url, tmp_path, ("A", "incremental"))
    dying, survivor = PgSessionDatabase(postgres_url), PgSessionDatabase(postgres_url)
    try:
        claimed = dying.claim_next()
        assert claimed is not None and claimed.state == PROCESSING
        assert survivor.orphans() == []  # its worker holds the connector's lock
        dying.close()  # the process died: its connection, and the lock, are gone
        (orphan,) = survivor.orphans()
        assert orphan.id == only
        assert survivor.set_state(only, PROCESSING, QUEUED)
        survivor.release(orphan)
        again = survivor.claim_next()
        assert again is not None and again.id == only
        survivor.release(again)
    finally:
        survivor.close()


def test_every_process_of_one_database_must_share_one_data_directory(
    tmp_path: Path, postgres_url: str
) -> None:
    (tmp_path / "shared").mkdir()
    PgBackend(postgres_url, tmp_path / "shared")
    PgBackend(postgres_url, tmp_path / "shared")  # the same directory: fine
    (tmp_path / "other").mkdir()
    with pytest.raises(ConfigError, match="must share one data directory"):
        PgBackend(postgres_url, tmp_path / "other")


def test_a_large_complete_load_gives_the_same_counts_rows_and_review_on_both_stores(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More changes than one spool batch (4096), links changed, kept and dropped: the native
    merge-join against the rows COPYed back gives SQLite's counts, rows and review; a review
    read only in part (its COPY still open) is ended cleanly."""
    day1 = tmp_path / "day1"
    day2 = tmp_path / "day2"
    day1.mkdir()
    day2.mkdir()
    first = [(f"k{n:05d}", f"v{n}", f"k{n // 2:05d}" if n % 3 else "") for n in range(12_000)]
    second = []
    for key, value, parent in first:
        number = int(key[1:])
        if number % 5 == 0:
            continue  # deleted
        if number % 4 == 0:
            value = f'changed "{number}", again'  # quoted in the canonical line
        if number % 7 == 0:
            parent = "" if parent else "k00001"  # a link dropped or made
        second.append((key, value, parent))
    second += [(f"n{n:05d}", "\\.", "k00002") for n in range(3_000)]  # inserted
    pairs1 = [(f"a{n:04d}", "b") for n in range(100)]
    pairs2 = [(f"a{n:04d}", "b") for n in range(50, 150)]
    for directory, rows, pairs in ((day1, first, pairs1), (day2, second, pairs2)):
        (directory / "T.sorted.csv").write_bytes(csv_bytes(["id", "v", "p"], rows))
        (directory / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], pairs))
    names = ["T.sorted.csv", "P.sorted.csv"]
    diffed: list[str] = []  # the tables PostgreSQL diffed against rows it COPYed back

    def counted(*args: Any) -> Any:
        diffed.append(args[1].name)
        return stored_changes(*args)

    stored_changes = pgstore._stored_changes
    monkeypatch.setattr(pgstore, "_stored_changes", counted)
    stores = [StoreHarness(tmp_path / "sqlite", None), StoreHarness(tmp_path / "pg", postgres_url)]
    try:
        for store in stores:
            assert store.apply("C", "initial", day1, names, TABLES, LIMITS).state == DONE
        reviews = []
        for store in stores:
            session = store.queued("C", "complete", names)
            with store.backend.review(session, SPEC, day2 / "T.sorted.csv", None) as diff:
                changes = [change[:3] + change[4:] for change in diff.changes]
            middle = changes[len(changes) // 2][1]
            with store.backend.review(session, SPEC, day2 / "T.sorted.csv", middle) as diff:
                after = [change[:3] + change[4:] for change in diff.changes]
            with store.backend.review(session, SPEC, day2 / "T.sorted.csv", None) as diff:
                first_one = next(iter(diff.changes))  # the rest is left unread
            assert store.db.cancel(session.id, "reviewed only")
            assert after == changes[len(changes) // 2 + 1 :]
            assert first_one[:3] + first_one[4:] == changes[0]
            reviews.append(changes)
        assert reviews[0] == reviews[1]
        outcomes = [
            summary_of(store.apply("C", "complete", day2, names, TABLES, LIMITS))
            for store in stores
        ]
        assert outcomes[0] == outcomes[1]
        assert diffed == ["T"] * 3 + ["T", "P"]  # three reviews, then the apply
        state, _reason, summary = outcomes[1]
        assert state == DONE
        counts = summary["tables"]["T"]
        assert (counts["inserted"], counts["deleted"]) == (3_000, 2_400)
        assert counts["inserted"] + counts["updated"] + counts["deleted"] > 2 * 4096
        for table, spec in (("T", SPEC), ("P", PAIR)):
            served = [store.resources("C", table, spec.columns) for store in stores]
            assert served[0] == served[1]
    finally:
        for store in stores:
            store.close()


def _sqlite_type(declared: str) -> str:
    """A SQLite declared type as the PostgreSQL type family the store must use for it."""
    return {"INTEGER": "integer", "TEXT": "text", "REAL": "floating"}[declared.upper()]


def _postgres_type(data_type: str) -> str:
    return {
        "integer": "integer",
        "bigint": "integer",
        "text": "text",
        "double precision": "floating",
    }[data_type]


def _default(text: str | None) -> str | None:
    """A column default as both databases spell a literal: ``','`` and ``','::text`` alike."""
    return None if text is None else text.removesuffix("::text")


def test_the_sessions_table_has_the_same_columns_and_indexes_on_both_stores(
    tmp_path: Path, postgres_url: str
) -> None:
    """The PostgreSQL sessions table is written out apart from SQLite's (pgstore._SCHEMA_DDL),
    and the shared session code reads and writes both with the same SQL: a column or an index
    added to one must be added to the other, and this says which."""
    import sqlite3

    from prepsync.server.sessions import SessionDatabase

    SessionDatabase(tmp_path / "sessions.sqlite3").close()
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as lite:
        sqlite_columns = [
            # The primary key (seq) is NOT NULL and numbered by the database on both.
            (name, _sqlite_type(declared), bool(not_null or primary), None if primary else default)
            for _cid, name, declared, not_null, default, primary in lite.execute(
                "PRAGMA table_info(sessions)"
            )
        ]
        sqlite_indexes = {
            index: [row[2] for row in lite.execute(f"PRAGMA index_info({index})")]
            for _seq, index, *_rest in lite.execute("PRAGMA index_list(sessions)")
            if not index.startswith("sqlite_autoindex")  # UNIQUE and PRIMARY KEY constraints
        }
    lite.close()

    PgBackend(postgres_url, tmp_path)
    with psycopg.connect(postgres_url) as connection:
        postgres_columns = [
            (
                name,
                _postgres_type(data_type),
                nullable == "NO",
                None if default and default.startswith("nextval(") else _default(default),
            )
            for name, data_type, nullable, default in connection.execute(
                "SELECT column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'prepsync' "
                "AND table_name = 'sessions' ORDER BY ordinal_position"
            )
        ]
        postgres_indexes = {
            index: columns
            for index, columns in connection.execute(
                "SELECT i.relname, array_agg(a.attname ORDER BY k.position) "
                "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "JOIN pg_class t ON t.oid = x.indrelid "
                "JOIN pg_namespace n ON n.oid = t.relnamespace "
                "CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, position) "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
                "WHERE n.nspname = 'prepsync' AND t.relname = 'sessions' "
                "AND NOT x.indisprimary AND NOT x.indisunique GROUP BY i.relname"
            )
        }
    assert postgres_columns == sqlite_columns
    assert postgres_indexes == sqlite_indexes
