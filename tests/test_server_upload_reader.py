"""The server's native reader of session files (prepsync/_upload.pyx, csrc/ps_upload.c) against
the rows each file was written from, and the complete diff's unchanged-row fast path."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prepsync._upload import StoredRows, UploadReader, native_store_problem
from prepsync.config import TableSpec, Thresholds
from prepsync.errors import DataError
from prepsync.protocol import DELETE, INSERT, UPDATE
from prepsync.server.diff import full_changes, open_upload, parse_line
from prepsync.server.store import encode_key, format_record, open_store

SEPARATORS = [",", ";", "\t", "|"]
# Values with what CSV must quote (separators, quotes, CR, LF), NUL and non-ASCII text.
value_text = st.text(
    st.one_of(st.sampled_from(list(',;\t|"\r\n\x00 é€😀')), st.characters(codec="utf-8")),
    max_size=8,
)


def quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[str, list[list[str]], bytes, int]:
    """(separator, rows with the header first, the file's bytes, key column)."""
    separator = draw(st.sampled_from(SEPARATORS))
    width = draw(st.integers(1, 4))
    key_column = draw(st.integers(0, width - 1))
    header = [f"c{index}" for index in range(width)]
    keys = draw(st.lists(value_text.filter(bool), max_size=12, unique_by=encode_key_of))
    keys.sort(key=encode_key_of)
    rows = [header]
    for key in keys:
        row = [draw(value_text) for _ in range(width)]
        row[key_column] = key
        rows.append(row)
    end = draw(st.sampled_from(["\n", "\r\n"]))
    lines = []
    for row in rows:
        fields = []
        for value in row:
            must = any(ch in value for ch in (separator, '"', "\r", "\n"))
            fields.append(quoted(value) if must or draw(st.booleans()) else value)
        lines.append(separator.join(fields))
        if draw(st.integers(0, 9)) == 0:
            lines.append("")  # a blank line: skipped by both readers
    text = end.join(lines) + (end if draw(st.booleans()) else "")
    return separator, rows, text.encode("utf-8"), key_column


def encode_key_of(value: str) -> bytes:
    return encode_key([value])


def native_rows(path: Path, separator: str, key_column: int) -> tuple[list[str], list]:
    reader = UploadReader(str(path), path.name, separator)
    header = reader.header()
    reader.configure([key_column], True)
    rows = []
    while batch := reader.rows(3):  # small batches: the batch boundaries are exercised too
        rows.extend(batch)
    reader.close()
    return header, rows


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=csv_files())
def test_native_rows_equal_the_python_readers(tmp_path: Path, case) -> None:
    separator, rows, data, key_column = case
    path = tmp_path / "T.sorted.csv"
    path.write_bytes(data)
    # The file's values are the strategy's (checked against the csv module, an independent
    # reader, so that the comparisons below test the native reader, not the strategy).
    text = data.decode("utf-8")
    oracle = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=separator) if row]
    assert oracle == rows
    header, native = native_rows(path, separator, key_column)
    assert header == oracle[0]
    assert [key for key, _line in native] == [encode_key([row[key_column]]) for row in oracle[1:]]
    # The stored line is the canonical record of the values, whatever the file's quoting.
    assert [line for _key, line in native] == [format_record(row) for row in oracle[1:]]
    assert [parse_line(line) for _key, line in native] == oracle[1:]
    # A delta's reading of the same file: the values themselves, in file order.
    reader = UploadReader(str(path), path.name, separator)
    assert reader.header() == oracle[0]
    records = []
    while batch := reader.records(2):
        records.extend(batch)
    reader.close()
    assert [values for _line, values in records] == oracle[1:]
    assert all(line > 1 for line, _values in records)


def test_delta_records_keep_their_first_line_and_need_no_key_order(tmp_path: Path) -> None:
    path = tmp_path / "T.sorted.delta.csv"
    path.write_bytes(b'command;id;v\r\ndelete;2;"a\nb"\r\n\r\ninsert;1;"x;""y"""\r\nmerge;3;\r\n')
    reader = UploadReader(str(path), path.name, ";")
    assert reader.header() == ["command", "id", "v"]
    assert reader.records(10) == [
        (2, ["delete", "2", "a\nb"]),
        (5, ["insert", "1", 'x;"y"']),
        (6, ["merge", "3", ""]),
    ]
    assert reader.records(10) == []


def test_keys_of_several_columns_escape_nul(tmp_path: Path) -> None:
    path = tmp_path / "M.sorted.csv"
    path.write_bytes(b'a,b,c\nx,"y\x00z",1\nx\x00,y,2\n')
    reader = UploadReader(str(path), path.name, ",")
    reader.header()
    reader.configure([0, 1], True)
    assert reader.rows(10) == [
        (encode_key(["x", "y\x00z"]), "x,y\x00z,1"),
        (encode_key(["x\x00", "y"]), "x\x00,y,2"),
    ]


def test_link_rows_count_full_pairs(tmp_path: Path) -> None:
    path = tmp_path / "E.sorted.csv"
    path.write_text('id,p,q\n1,a,b\n2,,b\n3,a,""\n4,"x,y",z\n')
    reader = UploadReader(str(path), path.name, ",")
    reader.header()
    reader.configure([0], True, [(1, 2), (0, 1)])
    assert len(reader.rows(100)) == 4
    reader.close()
    assert reader.link_rows == [2, 3]  # counts survive close()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"id,v\n1,a\n\n2,b,c\n", "T.sorted.csv, line 4: expected 2 fields, found 3"),
        (b"id,v\n1,a\n,b\n", "T.sorted.csv, line 3: null key"),
        (b'id,v\n1,a\n"",b\n', "T.sorted.csv, line 3: null key"),
        (b"id,v\n1,a\n1,b\n", "T.sorted.csv, line 3: duplicate key"),
        (b"id,v\n2,a\n10,b\n", "T.sorted.csv, line 3: not in key order"),
        (b'id,v\n1,"a\nb"\n0,c\n', "T.sorted.csv, line 4: not in key order"),
        (b"id,v\n1,a\r\n2,b\rc\n", "T.sorted.csv, line 3: a CR outside quotes"),
        (b'id,v\n1,a\n2,"b\n', "T.sorted.csv, line 3: unterminated quote"),
        (b'id,v\n1,"a"b\n', "T.sorted.csv, line 2: text after closing quote"),
        (b"id,v\n1,a\n2,\xff\n", "T.sorted.csv, line 3: invalid UTF-8"),
    ],
)
@pytest.mark.parametrize(
    ("method", "size"), [("rows", 100), ("check", 100), ("copy_block", 1), ("copy_block", 1 << 20)]
)
def test_errors_name_the_file_and_the_line(
    tmp_path: Path, data: bytes, problem: str, method: str, size: int
) -> None:
    # check() (the PostgreSQL store's pass before COPY) and copy_block() (its binary COPY, a
    # block of one row or of many) find what rows() finds.
    path = tmp_path / "T.sorted.csv"
    path.write_bytes(data)
    reader = UploadReader(str(path), path.name, ",")
    reader.header()
    reader.configure([0], True)
    read = getattr(reader, method)
    with pytest.raises(DataError) as raised:
        while read(size):
            pass
    assert str(raised.value) == problem
    reader.close()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"command,id\ninsert,1\n\ninsert,2,c\n", "line 4: expected 2 fields, found 3"),
        (b"command,id\ninsert,1\r\ninsert,b\rc\n", "line 3: a CR outside quotes"),
        (b'command,id\ninsert,1\ninsert,"b\n', "line 3: unterminated quote"),
        (b'command,id\ninsert,"a"b\n', "line 2: text after closing quote"),
        (b"command,id\ninsert,1\ninsert,\xff\n", "line 3: invalid UTF-8"),
    ],
)
def test_delta_records_fail_as_rows_do(tmp_path: Path, data: bytes, problem: str) -> None:
    # A delta's key and order are judged by the diff (commands may repeat a key); the rest of
    # a record is checked by the reader, with the messages of a complete load's rows.
    path = tmp_path / "T.sorted.delta.csv"
    path.write_bytes(data)
    reader = UploadReader(str(path), path.name, ",")
    reader.header()
    with pytest.raises(DataError) as raised:
        while reader.records(100):
            pass
    assert str(raised.value) == f"T.sorted.delta.csv, {problem}"


def test_check_counts_the_rows_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "T.sorted.csv"
    path.write_bytes(b"id,v\n" + b"".join(b"%03d,x\n" % number for number in range(250)))
    reader = UploadReader(str(path), path.name, ",")
    reader.header()
    reader.configure([0], True)
    assert [reader.check(100), reader.check(100), reader.check(100), reader.check(100)] == [
        100,
        100,
        50,
        0,
    ]
    reader.close()


def test_an_empty_file_has_no_header(tmp_path: Path) -> None:
    path = tmp_path / "T.sorted.csv"
    path.write_bytes(b"\n\n")
    with pytest.raises(DataError, match=r"^T\.sorted\.csv: empty file \(no header\)$"):
        UploadReader(str(path), path.name, ",").header()


def test_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^T\.sorted\.csv: cannot read: "):
        UploadReader(str(tmp_path / "T.sorted.csv"), "T.sorted.csv", ",")


# ------------------------------------------------------------------- the complete diff's fast path

SPEC = TableSpec("T", ("id", "v", "w"), ("id",), Thresholds())


def changes(
    tmp_path: Path,
    upload_text: str,
    stored: list[tuple[str, str]],
    after: bytes | None = None,
    as_bytes: bool = False,
    native: bool = False,
) -> list[tuple]:
    """``as_bytes``: stored lines as UTF-8 bytes, as store.stored_batches reads them;
    ``native``: the stored rows written to a store and read back by StoredRows (by C)."""
    path = tmp_path / "T.sorted.csv"
    path.write_text(upload_text)
    upload = open_upload(path, SPEC, ",", command=False)
    rows = [(encode_key([key]), line.encode() if as_bytes else line) for key, line in stored]
    source: object = [rows[start : start + 2] for start in range(0, len(rows), 2)]  # boundaries
    if native:
        store_path = tmp_path / "store.sqlite3"
        store_path.unlink(missing_ok=True)
        store = open_store(store_path)
        try:
            with store.transaction() as transaction:
                tid = transaction.table("C", "T").tid
                lines = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in rows]
                transaction.write_changes(tid, 1, lines, (), ())
        finally:
            store.close()
        source = StoredRows(str(store_path), tid, after)
    return [
        (command, key, line, stored_line)
        for command, key, line, _values, stored_line in full_changes(upload, [0], source, after)
    ]


def test_the_native_store_reader_is_there() -> None:
    # Where Python's sqlite3 runs on a shared libsqlite3 (this project's machines), the
    # complete diff reads the store natively; the Python path stays for other builds.
    assert native_store_problem() is None


def test_stored_rows_read_natively_equal_the_python_reader(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store.sqlite3")
    try:
        with store.transaction() as transaction:
            tid = transaction.table("C", "T").tid
            other = transaction.table("C", "U").tid
            rows = [(encode_key([f"k{n:04d}", "\x00é"]), f'k{n:04d},"a\nb",é') for n in range(5000)]
            transaction.write_changes(tid, 1, rows, (), ())
            transaction.write_changes(other, 1, [(encode_key(["k0001"]), "other")], (), ())
    finally:
        store.close()
    for after in (None, rows[0][0], rows[2500][0], rows[-1][0], b"zz"):
        native = StoredRows(str(tmp_path / "store.sqlite3"), tid, after)
        stored = [(key, line.encode()) for key, line in rows if after is None or key > after]
        upload = tmp_path / "T.sorted.csv"
        upload.write_text("id,v,w\n")  # every stored row above `after` comes out deleted
        got = [
            (key, stored_line.encode())
            for command, key, _line, _values, stored_line in full_changes(
                open_upload(upload, SPEC, ",", command=False), [0], native, after
            )
            if command is DELETE and stored_line is not None
        ]
        assert got == stored


def test_a_store_that_cannot_be_read_is_a_store_error(tmp_path: Path) -> None:
    # sqlite3.OperationalError, as from the Python readers: the worker queues the session again.
    with pytest.raises(sqlite3.OperationalError, match="cannot open the store"):
        StoredRows(str(tmp_path / "missing" / "store.sqlite3"), 1)


@pytest.mark.parametrize("native", [False, True])
def test_unchanged_rows_yield_nothing_and_changes_are_found(tmp_path: Path, native: bool) -> None:
    stored = [("1", "1,a,b"), ("2", '2,"x,y",c'), ("3", "3,d,e"), ("5", "5,f,g")]
    upload = 'id,v,w\n1,a,b\n2,"x,y",c\n3,d,CHANGED\n4,new,row\n'
    assert changes(tmp_path, upload, stored, native=native) == [
        (UPDATE, encode_key(["3"]), "3,d,CHANGED", "3,d,e"),
        (INSERT, encode_key(["4"]), "4,new,row", None),
        (DELETE, encode_key(["5"]), None, "5,f,g"),
    ]


@pytest.mark.parametrize(("as_bytes", "native"), [(False, False), (True, False), (False, True)])
def test_a_stored_line_quoted_otherwise_is_not_an_update(
    tmp_path: Path, as_bytes: bool, native: bool
) -> None:
    # A store written before lines were canonical may hold "a" for a: same values, no change.
    stored = [("1", '"1","a",b'), ("2", '2,"b",c')]
    got = changes(tmp_path, "id,v,w\n1,a,b\n2,b,c\n", stored, as_bytes=as_bytes, native=native)
    assert got == []


@pytest.mark.parametrize("native", [False, True])
def test_changes_after_a_key_skip_the_rows_up_to_it(tmp_path: Path, native: bool) -> None:
    # The review's paging: the stored rows start above `after`, the file's rows up to it are
    # skipped (not inserts). The native reader is given a stored row below it too.
    stored = [("3", "3,d,e"), ("5", "5,f,g")]
    if native:
        stored.insert(0, ("1", "1,a,b"))
    upload = "id,v,w\n1,a,b\n2,x,y\n3,d,CHANGED\n4,new,row\n"
    assert changes(tmp_path, upload, stored, after=encode_key(["2"]), native=native) == [
        (UPDATE, encode_key(["3"]), "3,d,CHANGED", "3,d,e"),
        (INSERT, encode_key(["4"]), "4,new,row", None),
        (DELETE, encode_key(["5"]), None, "5,f,g"),
    ]


@settings(max_examples=100, deadline=None)
@given(
    stored=st.dictionaries(st.integers(0, 30), st.sampled_from(["a", "b", "x,y", "é"])),
    sent=st.dictionaries(st.integers(0, 30), st.sampled_from(["a", "b", "x,y", "é"])),
    as_bytes=st.booleans(),
    native=st.booleans(),
)
def test_the_native_merge_equals_a_dictionary_diff(
    stored: dict, sent: dict, as_bytes: bool, native: bool
) -> None:
    import tempfile

    def line(key: int, value: str) -> str:
        return format_record([f"{key:03d}", value, ""])

    with tempfile.TemporaryDirectory() as directory:
        text = "id,v,w\n" + "".join(line(k, sent[k]) + "\n" for k in sorted(sent))
        got = changes(
            Path(directory),
            text,
            [(f"{k:03d}", line(k, stored[k])) for k in sorted(stored)],
            as_bytes=as_bytes,
            native=native,
        )
    expected = []
    for k in sorted(stored.keys() | sent.keys()):
        key = encode_key([f"{k:03d}"])
        if k not in stored:
            expected.append((INSERT, key, line(k, sent[k]), None))
        elif k not in sent:
            expected.append((DELETE, key, None, line(k, stored[k])))
        elif stored[k] != sent[k]:
            expected.append((UPDATE, key, line(k, sent[k]), line(k, stored[k])))
    assert got == expected


@pytest.mark.parametrize("native", [False, True])
def test_key_only_rows_stored_without_a_line_diff_by_key(tmp_path: Path, native: bool) -> None:
    # An association-only table's rows are stored with an empty line: equal keys are
    # unchanged, and a delete carries the line rebuilt from the key.
    pair = TableSpec("P", ("a", "b"), None, Thresholds())
    stored = [(encode_key(["g", 'x,"y"']), ""), (encode_key(["h", "z"]), "")]
    path = tmp_path / "P.sorted.csv"
    path.write_text('a,b\ng,"x,""y"""\ni,j\n')
    source: object = [[(key, line.encode()) for key, line in stored]]
    if native:
        store = open_store(tmp_path / "store.sqlite3")
        try:
            with store.transaction() as transaction:
                tid = transaction.table("C", "P").tid
                transaction.write_changes(tid, 1, stored, (), ())
        finally:
            store.close()
        source = StoredRows(str(tmp_path / "store.sqlite3"), tid)
    upload = open_upload(path, pair, ",", command=False)
    got = [
        (command, key, line, stored_line)
        for command, key, line, _values, stored_line in full_changes(
            upload, [0, 1], source, key_only=True
        )
    ]
    assert got == [
        (DELETE, encode_key(["h", "z"]), None, "h,z"),
        (INSERT, encode_key(["i", "j"]), "i,j", None),
    ]
