"""The store and apply logic against a plain-Python model: random loads and deltas."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from serverutil import csv_bytes

from prepsync._upload import UploadReader
from prepsync.config import TableSpec, Thresholds
from prepsync.protocol import DONE, FAILED
from prepsync.server.apply import apply_session
from prepsync.server.sessions import Session
from prepsync.server.store import iter_table_csv, open_store

SPEC = TableSpec("T", ("id", "v"), ("id",), Thresholds())
PAIR = TableSpec("P", ("a", "b"), None, Thresholds())
TABLES = {"t": SPEC, "p": PAIR}

# Keys from a small alphabet, so that prefixes, shared keys and non-ASCII order all come up.
# NUL only where the csv module reads it (Python 3.11+).
_KEY_CHARACTERS = ["a", "b", "é", "中", ",", '"', "\n"]
if sys.version_info >= (3, 11):
    _KEY_CHARACTERS.append("\x00")
keys = st.text(st.sampled_from(_KEY_CHARACTERS), min_size=1, max_size=3)
values = st.text(st.sampled_from(["x", " ", ",", '"', "\r", "\n", "é"]), max_size=3)


def session(seq: int, mode: str, names: list[str]) -> Session:
    files = [{"name": name, "size": 0, "xxh3_128": "0" * 32} for name in names]
    return Session(
        seq, f"s{seq}", "C", "agent", mode, "processing", None, False, files, None, 0, 0, 0
    )


def ordered(rows: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(rows.items(), key=lambda row: row[0].encode("utf-8"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_loads_and_deltas_match_a_model(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        store = open_store(root / "store.sqlite3")
        model: dict[str, str] = {}
        pairs: set[tuple[str, str]] = set()
        try:
            for seq in range(1, data.draw(st.integers(1, 5), "steps") + 1):
                directory = root / str(seq)
                directory.mkdir()
                if seq == 1 or data.draw(st.booleans(), "complete"):
                    model = data.draw(st.dictionaries(keys, values, max_size=8), "rows")
                    pairs = data.draw(st.sets(st.tuples(keys, keys), max_size=6), "pairs")
                    (directory / "T.sorted.csv").write_bytes(csv_bytes(["id", "v"], ordered(model)))
                    (directory / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], sorted(pairs)))
                    names = ["T.sorted.csv", "P.sorted.csv"]
                    outcome = apply_session(
                        store, session(seq, "complete", names), TABLES, directory
                    )
                    assert (outcome.state, outcome.reason) == (DONE, None)
                else:
                    commands = []
                    # A delta is in key order, as the agent writes it.
                    delta_keys = data.draw(st.lists(keys, max_size=6, unique=True), "keys")
                    for key in sorted(delta_keys, key=lambda key: key.encode("utf-8")):
                        value = data.draw(values, "value")
                        if key in model:
                            command = data.draw(st.sampled_from(["update", "delete", "merge"]))
                        else:
                            command = data.draw(st.sampled_from(["insert", "merge"]))
                        commands.append((command, key, value))
                        if command == "delete":
                            del model[key]
                        else:
                            model[key] = value
                    delta = csv_bytes(["command", "id", "v"], commands)
                    (directory / "T.sorted.delta.csv").write_bytes(delta)
                    outcome = apply_session(
                        store,
                        session(seq, "incremental", ["T.sorted.delta.csv"]),
                        TABLES,
                        directory,
                    )
                    assert (outcome.state, outcome.reason) == (DONE, None)
                csv = b"".join(iter_table_csv(store.path, "C", "T", SPEC.columns))
                assert csv == csv_bytes(["id", "v"], ordered(model))
                pair_order = sorted(pairs, key=lambda row: [value.encode() for value in row])
                assert b"".join(iter_table_csv(store.path, "C", "P", PAIR.columns)) == csv_bytes(
                    ["a", "b"], pair_order
                )
                # An association-only table's rows are stored without their line (the key holds
                # every value): what is served above is rebuilt from the keys.
                kept = store.connection.execute(
                    "SELECT count(*) FROM rows JOIN tables USING (tid) "
                    "WHERE name = 'P' AND line != ''"
                ).fetchone()
                assert kept == (0,)
        finally:
            store.close()


def test_a_failing_delta_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store.sqlite3")
    try:
        (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v"], [("a", "1")]))
        (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], []))
        apply_session(
            store, session(1, "initial", ["T.sorted.csv", "P.sorted.csv"]), TABLES, tmp_path
        )
        delta = csv_bytes(["command", "id", "v"], [("insert", "b", "2"), ("insert", "a", "dup")])
        (tmp_path / "T.sorted.delta.csv").write_bytes(delta)
        outcome = apply_session(
            store, session(2, "incremental", ["T.sorted.delta.csv"]), TABLES, tmp_path
        )
        assert outcome.state == FAILED and "line 3" in (outcome.reason or "")
        assert not store.was_applied("s2") and store.was_applied("s1")
        assert b"".join(iter_table_csv(store.path, "C", "T", SPEC.columns)) == b"id,v\na,1\n"
    finally:
        store.close()


def test_the_bulk_path_writes_batches_of_any_size(tmp_path: Path) -> None:
    # Inserts go INSERT_ROWS to a statement and the rest one by one: every split point counts.
    from prepsync.server.store import INSERT_ROWS, encode_key, stored_rows

    store = open_store(tmp_path / "store.sqlite3")
    try:
        expected: dict[bytes, str] = {}
        with store.transaction() as transaction:
            tid = transaction.table("C", "T").tid
            start = 0
            for size in (0, 1, INSERT_ROWS - 1, INSERT_ROWS, INSERT_ROWS + 1, 3 * INSERT_ROWS + 5):
                batch = [
                    (encode_key([f"{number:06d}"]), f"{number:06d},v{number}")
                    for number in range(start, start + size)
                ]
                start += size
                transaction.write_changes(tid, 7, batch, (), ())
                expected.update(batch)
            keys = sorted(expected)
            transaction.write_changes(tid, 8, [], [(keys[3], "changed")], [keys[0], keys[-1]])
        expected[keys[3]] = "changed"
        del expected[keys[0]], expected[keys[-1]]
        assert list(stored_rows(store.connection, tid)) == sorted(expected.items())
        seqs = dict(store.connection.execute("SELECT key, seq FROM rows WHERE tid = ?", (tid,)))
        assert seqs[keys[3]] == 8 and {seqs[key] for key in keys[4:-1]} == {7}
    finally:
        store.close()


def test_a_load_into_an_empty_table_stores_text_lines_of_every_group_size(tmp_path: Path) -> None:
    # insert_groups binds lines as bytes: they must come back as TEXT, equal to the file's
    # canonical lines, whether the file ends on a group boundary or not.
    from prepsync._upload import UploadReader
    from prepsync.server.store import INSERT_ROWS, encode_key, stored_rows

    for count in (0, 1, INSERT_ROWS - 1, INSERT_ROWS, INSERT_ROWS + 1, 5 * INSERT_ROWS + 3):
        path = tmp_path / "T.sorted.csv"
        rows = [(f"{number:06d}é", f'v "{number}"') for number in range(count)]
        canonical = [f'{key},"{value.replace(chr(34), 2 * chr(34))}"' for key, value in rows]
        path.write_bytes(csv_bytes(["id", "v"], rows))
        store = open_store(tmp_path / f"store-{count}.sqlite3")
        try:
            reader = UploadReader(str(path), path.name, ",")
            reader.header()
            reader.configure([0], True)
            with store.transaction() as transaction:
                tid = transaction.table("C", "T").tid
                while groups := reader.insert_groups(INSERT_ROWS, 2):
                    assert all(len(group) == 2 * INSERT_ROWS for group in groups[:-1])
                    transaction.insert_groups(tid, 3, groups)
            expected = [
                (encode_key([key]), line) for (key, _v), line in zip(rows, canonical, strict=True)
            ]
            assert list(stored_rows(store.connection, tid)) == expected
            kinds = {kind for (kind,) in store.connection.execute("SELECT typeof(line) FROM rows")}
            assert kinds <= {"text"}
            seqs = {seq for (seq,) in store.connection.execute("SELECT seq FROM rows")}
            assert seqs <= {3}
        finally:
            store.close()


def _load_file(tmp_path: Path, rows: list[tuple[str, str]], extra: bytes = b"") -> Path:
    path = tmp_path / "T.sorted.csv"
    path.write_bytes(csv_bytes(["id", "v"], rows) + extra)
    return path


def _configured_reader(path: Path) -> UploadReader:
    reader = UploadReader(str(path), path.name, ",")
    reader.header()
    reader.configure([0], True)
    return reader


def test_load_rows_natively_and_through_python_store_the_same(tmp_path: Path) -> None:
    from prepsync.server.store import Transaction, encode_key, format_record, stored_rows

    rows = [(f"{number:05d}中", f'a,"{number}"\n') for number in range(3000)]
    path = _load_file(tmp_path, rows)
    results = []
    for native in (True, False):
        store = open_store(tmp_path / f"store-{native}.sqlite3")
        try:
            assert (store.native is not None) is True  # this project's machines have it
            with store.transaction() as transaction:
                if not native:  # the fallback, as where SQLite cannot be reached from C
                    transaction = Transaction(transaction.connection, transaction.path, None)
                tid = transaction.table("C", "T").tid
                assert transaction.load_rows(tid, 4, _configured_reader(path)) == len(rows)
            results.append(list(stored_rows(store.connection, tid)))
            kinds = {kind for (kind,) in store.connection.execute("SELECT typeof(line) FROM rows")}
            assert kinds == {"text"}
        finally:
            store.close()
    expected = [(encode_key([key]), format_record([key, value])) for key, value in rows]
    assert results == [expected, expected]


def test_a_bad_row_in_a_native_load_names_its_line_and_leaves_nothing(tmp_path: Path) -> None:
    import pytest

    from prepsync.errors import DataError

    path = _load_file(tmp_path, [(f"{n:03d}", "v") for n in range(100)], b"050,out of order\n")
    store = open_store(tmp_path / "store.sqlite3")
    try:
        problem = r"^T\.sorted\.csv, line 102: not in key order$"
        with pytest.raises(DataError, match=problem), store.transaction() as transaction:
            tid = transaction.table("C", "T").tid
            transaction.load_rows(tid, 1, _configured_reader(path))
        assert store.connection.execute("SELECT count(*) FROM rows").fetchone() == (0,)
        assert store.native is not None
        with pytest.raises(ValueError, match="inside the writer's transaction"):
            store.native.bulk_load(_configured_reader(path), tid, 1)
    finally:
        store.close()


def test_an_interrupted_native_load_is_a_store_error(tmp_path: Path) -> None:
    # Worker.stop() interrupts the writer from another thread: the load must stop with the
    # sqlite3 error the worker knows (and roll back), not run to its end.
    import sqlite3
    import threading

    import pytest

    path = _load_file(tmp_path, [(f"{n:07d}", "value " * 20) for n in range(300_000)])
    store = open_store(tmp_path / "store.sqlite3")
    done = threading.Event()

    def interrupt() -> None:
        while not done.is_set():
            store.interrupt()
            done.wait(0.001)

    try:
        interrupted = pytest.raises(sqlite3.OperationalError, match="interrupt")
        with interrupted, store.transaction() as transaction:
            tid = transaction.table("C", "T").tid
            reader = _configured_reader(path)
            thread = threading.Thread(target=interrupt)
            thread.start()
            try:
                transaction.load_rows(tid, 1, reader)
            finally:
                done.set()
                thread.join()
        assert store.connection.execute("SELECT count(*) FROM rows").fetchone() == (0,)
    finally:
        store.close()


@given(
    st.lists(st.text(st.sampled_from([",", '"', "\r", "\n", "\x00", "é", "a", " "]), min_size=1))
)
# An empty first value once lost the separator after it (the line ran "a" for ["", "a"]).
@example(["", "a"])
@example(["", ""])
def test_a_key_only_line_rebuilt_from_its_key_is_the_canonical_record(values: list[str]) -> None:
    from prepsync._upload import key_line
    from prepsync.server.store import encode_key, format_record

    assert key_line(encode_key(values)) == format_record(values)


def test_a_link_table_stored_with_its_lines_still_diffs_and_serves(tmp_path: Path) -> None:
    # A store written before key-only rows keeps its lines: a complete session with the same
    # pairs changes nothing, a missing pair is deleted, and the rows written from then on are
    # key-only.
    from prepsync.server.store import encode_key, format_record

    pairs = [("a", "x,y"), ("b", "z"), ("c", "w")]
    store = open_store(tmp_path / "store.sqlite3")
    try:
        with store.transaction() as transaction:
            state = transaction.table("C", "P")
            old_lines = [(encode_key(pair), format_record(pair)) for pair in pairs]
            transaction.write_changes(state.tid, 1, old_lines, (), ())
            state.header, state.row_count = ("a", "b"), len(pairs)
            transaction.save_table(state)
        (tmp_path / "T.sorted.csv").write_bytes(csv_bytes(["id", "v"], []))
        (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], [*pairs, ("d", "v")]))
        names = ["T.sorted.csv", "P.sorted.csv"]
        outcome = apply_session(store, session(2, "complete", names), TABLES, tmp_path)
        assert outcome.state == DONE
        counts = outcome.summary["tables"]["P"]
        assert (counts["inserted"], counts["updated"], counts["deleted"]) == (1, 0, 0)
        (tmp_path / "P.sorted.csv").write_bytes(csv_bytes(["a", "b"], [pairs[0], ("d", "v")]))
        outcome = apply_session(store, session(3, "complete", names), TABLES, tmp_path)
        counts = outcome.summary["tables"]["P"]
        assert (counts["inserted"], counts["updated"], counts["deleted"]) == (0, 0, 2)
        served = b"".join(iter_table_csv(store.path, "C", "P", PAIR.columns))
        assert served == csv_bytes(["a", "b"], [pairs[0], ("d", "v")])
        lines = dict(store.connection.execute("SELECT key, line FROM rows"))
        assert lines == {encode_key(pairs[0]): 'a,"x,y"', encode_key(["d", "v"]): ""}
    finally:
        store.close()
