"""The store and apply logic against a plain-Python model: random loads and deltas."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverutil import csv_bytes

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
