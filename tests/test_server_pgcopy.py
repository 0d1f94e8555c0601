"""The PostgreSQL store's native reader of stored rows (prepsync/_upload.pyx ``CopyRows`` over
csrc/ps_pgcopy.c): a binary COPY stream turned into the SQLite store's (key, canonical line),
fed in pieces cut anywhere, and read from a real server through libpq."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from prepsync._upload import CopyRows, native_copy_problem
from prepsync.errors import DataError
from prepsync.server.store import encode_key, format_record

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"

# What a canonical line must quote (",", a quote, CR, LF), what it must not (";", a space, a
# backslash, COPY's "\." end marker as text) and text beyond ASCII.
value_text = st.one_of(
    st.text(st.sampled_from(list(',"\r\n; \\.é€😀x')), max_size=6),
    st.just("\\."),
    st.none(),  # NULL: an empty field, as an empty value is
)
key_text = st.text(st.sampled_from(list(',"\r\nab é中😀')), min_size=1, max_size=4)


def binary_copy(rows: Sequence[Sequence[str | None]], extension: bytes = b"") -> bytes:
    """PostgreSQL's binary COPY format of ``rows`` (text columns)."""
    out = [SIGNATURE, struct.pack("!iI", 0, len(extension)), extension]
    for row in rows:
        out.append(struct.pack("!h", len(row)))
        for value in row:
            if value is None:
                out.append(struct.pack("!i", -1))
            else:
                data = value.encode("utf-8")
                out.append(struct.pack("!i", len(data)) + data)
    out.append(struct.pack("!h", -1))
    return b"".join(out)


def pieces(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    at = 0
    for cut in sorted(set(cut % (len(data) + 1) for cut in cuts)):
        yield data[at:cut]
        at = cut
    yield data[at:]


def fed(
    data: bytes, cuts: Sequence[int], width: int, keys: Sequence[int]
) -> list[tuple[bytes, bytes]]:
    # Empty pieces are skipped: an empty block is the end of the stream.
    blocks = iter([piece for piece in pieces(data, cuts) if piece] + [b""])
    return CopyRows("T.sorted.csv", width, keys, read=lambda: next(blocks)).pairs()


def expected(
    rows: Sequence[Sequence[str | None]], keys: Sequence[int]
) -> list[tuple[bytes, bytes]]:
    return [
        (
            encode_key([row[k] or "" for k in keys]),
            format_record([value or "" for value in row]).encode("utf-8"),
        )
        for row in rows
    ]


@st.composite
def tables(draw: st.DrawFn) -> tuple[int, list[int], list[list[str | None]]]:
    width = draw(st.integers(1, 4))
    nkeys = draw(st.integers(1, width))
    keys = draw(st.permutations(range(width)))[:nkeys]
    rows: list[list[str | None]] = []
    for _ in range(draw(st.integers(0, 12))):
        row = [draw(value_text) for _ in range(width)]
        for k in keys:
            row[k] = draw(key_text)
        rows.append(row)
    unique = {encode_key([row[k] or "" for k in keys]): row for row in rows}
    return width, list(keys), [unique[key] for key in sorted(unique)]


@settings(max_examples=200, deadline=None)
@given(table=tables(), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_rows_fed_in_any_pieces_are_the_stores_keys_and_lines(table, cuts) -> None:
    width, keys, rows = table
    data = binary_copy(rows)
    assert fed(data, cuts, width, keys) == expected(rows, keys)


def test_one_byte_at_a_time_and_a_header_extension() -> None:
    rows = [["a", None, "x,y"], ["b", "", 'say "hi"\r\n'], ["c", "\\.", "é"]]
    data = binary_copy(rows, extension=b"\x00\x01\x02")
    assert fed(data, range(len(data)), 3, [0]) == [
        (b"a\x00\x00", b'a,,"x,y"'),
        (b"b\x00\x00", b'b,,"say ""hi""\r\n"'),
        (b"c\x00\x00", "c,\\.,é".encode()),
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (binary_copy([["b"], ["a"]]), "keys not in ascending order"),
        (binary_copy([["a"], ["a"]]), "keys not in ascending order"),
        (binary_copy([["a", "b"]]), "a row of another width"),
        (binary_copy([["a"], ["b"]])[:-5], "cut short"),
        (binary_copy([["a"]])[:-2], "cut short"),
        (b"PGCOPY\n\xff\r\n\x01" + bytes(8), "no binary signature"),
        (b"", "cut short"),
    ],
)
def test_a_malformed_stream_is_a_data_error_naming_the_file(data: bytes, problem: str) -> None:
    with pytest.raises(DataError, match=f"^T.sorted.csv: .*{problem}"):
        fed(data, [7], 1, [0])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        CopyRows("T", 2, [0])  # neither a connection nor blocks
    with pytest.raises(ValueError):
        CopyRows("T", 2, [2], read=lambda: b"")  # a key column beyond the row


# ------------------------------------------------------------------------- a real server


@pytest.mark.postgres
def test_the_native_libpq_reader_is_there() -> None:
    # The test environment's psycopg has a compiled libpq binding: the native path is measured
    # and tested, not the fallback.
    assert native_copy_problem() is None


def _load(connection: psycopg.Connection, rows: list[tuple[str, str | None, str | None]]) -> None:
    connection.execute("DROP TABLE IF EXISTS pgcopy_t")
    connection.execute(
        'CREATE TABLE pgcopy_t (id text COLLATE "C" PRIMARY KEY, v text COLLATE "C", '
        'w text COLLATE "C")'
    )
    with connection.cursor() as cursor, cursor.copy("COPY pgcopy_t FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


ROWS = [
    (f"k{n:05d}", None if n % 7 == 0 else f"v,{n}" if n % 3 else 'q"' + "é" * (n % 5), "\\.")
    for n in range(20_000)
]
SELECT = "COPY (SELECT id, v, w FROM pgcopy_t ORDER BY id) TO STDOUT (FORMAT binary)"


@pytest.mark.postgres
@pytest.mark.parametrize("native", [True, False])
def test_rows_read_from_a_server_and_the_connection_after(postgres_url: str, native: bool) -> None:
    with psycopg.connect(postgres_url) as connection:
        _load(connection, ROWS)
        with connection.cursor() as cursor, cursor.copy(SELECT) as copy:
            if native:
                rows = CopyRows("T", 3, [0], pgconn_ptr=connection.pgconn.pgconn_ptr)
            else:
                rows = CopyRows("T", 3, [0], read=copy.read)
            read = rows.pairs()
        assert read == expected(ROWS, [0])
        # The COPY is over and its result read: the transaction goes on.
        assert connection.execute("SELECT count(*) FROM pgcopy_t").fetchone() == (len(ROWS),)
        connection.rollback()


@pytest.mark.postgres
def test_a_copy_that_fails_midway_raises_psycopgs_error(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        _load(connection, ROWS)
        failing = sql.SQL(
            "COPY (SELECT id, v, CASE WHEN id = 'k15000' THEN (1 / 0)::text END FROM pgcopy_t "
            "ORDER BY id) TO STDOUT (FORMAT binary)"
        )
        with (
            pytest.raises(psycopg.errors.DivisionByZero, match="division by zero"),
            connection.cursor() as cursor,
            cursor.copy(failing),
        ):
            CopyRows("T", 3, [0], pgconn_ptr=connection.pgconn.pgconn_ptr).pairs()
        connection.rollback()  # the connection is usable again
        assert connection.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.postgres
def test_a_reader_stopped_early_leaves_the_connection_usable(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        _load(connection, ROWS)
        connection.commit()

        class Stop(Exception):
            pass

        with pytest.raises(Stop), connection.cursor() as cursor, cursor.copy(SELECT):
            CopyRows("T", 3, [0], pgconn_ptr=connection.pgconn.pgconn_ptr)
            raise Stop  # psycopg cancels the COPY
        connection.rollback()
        assert connection.execute("SELECT count(*) FROM pgcopy_t").fetchone() == (len(ROWS),)
