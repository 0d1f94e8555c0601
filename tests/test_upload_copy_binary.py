"""The native reader's PostgreSQL binary COPY encoder (UploadReader.copy_block, csrc/ps_upload.c)
against a plain-Python encoder of the rows Python's csv module reads from the same file."""

from __future__ import annotations

import csv
import io
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prepsync._upload import UploadReader
from prepsync.server.store import encode_key

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
SEPARATORS = [",", ";", "\t", "|"]
value_text = st.text(
    st.one_of(st.sampled_from(list(',;\t|"\r\n\x00 é€😀')), st.characters(codec="utf-8")),
    max_size=12,
)


def reference_tuples(rows: list[list[str]]) -> bytes:
    """The binary COPY tuples of ``rows``: an empty value is NULL (-1), any other its UTF-8."""
    out = bytearray()
    for row in rows:
        out += struct.pack(">h", len(row))
        for value in row:
            if value == "":
                out += struct.pack(">i", -1)
            else:
                encoded = value.encode("utf-8")
                out += struct.pack(">i", len(encoded)) + encoded
    return bytes(out)


def split_tuples(block: bytes) -> int:
    """The whole tuples in ``block`` (signature and trailer allowed at its ends); fails on a
    tuple cut by the block's end."""
    at, count = 0, 0
    if block.startswith(SIGNATURE):
        at = len(SIGNATURE)
    while at < len(block):
        (fields,) = struct.unpack_from(">h", block, at)
        at += 2
        if fields == -1:
            assert at == len(block), "the trailer ends the data"
            break
        for _ in range(fields):
            (length,) = struct.unpack_from(">i", block, at)
            at += 4 + max(length, 0)
        assert at <= len(block), "a tuple cut by the block's end"
        count += 1
    return count


def encoded_blocks(path: Path, separator: str, keys: list[int], target: int) -> list[bytes]:
    reader = UploadReader(str(path), path.name, separator)
    reader.header()
    reader.configure(keys, bool(keys))
    blocks = []
    while block := reader.copy_block(target):
        blocks.append(block)
    assert reader.copy_block(target) == b""  # stays ended
    rows_read = reader.rows_read
    reader.close()
    for block in blocks:
        split_tuples(block)
    assert sum(split_tuples(block) for block in blocks) == rows_read
    return blocks


def quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[str, list[list[str]], bytes, int]:
    """(separator, rows with the header first, the file's bytes, key column); values may be
    empty unquoted, empty quoted, hold separators, quotes, CR/LF, NUL and non-ASCII text."""
    separator = draw(st.sampled_from(SEPARATORS))
    width = draw(st.integers(1, 40))
    key_column = draw(st.integers(0, width - 1))
    header = [f"c{index}" for index in range(width)]
    keys = draw(st.lists(value_text.filter(bool), max_size=10, unique_by=lambda k: encode_key([k])))
    keys.sort(key=lambda k: encode_key([k]))
    rows = [header]
    for key in keys:
        row = [draw(st.one_of(st.just(""), value_text)) for _ in range(width)]
        row[key_column] = key
        rows.append(row)
    end = draw(st.sampled_from(["\n", "\r\n"]))
    lines = []
    for row in rows:
        fields = []
        for value in row:
            must = any(ch in value for ch in (separator, '"', "\r", "\n"))
            fields.append(quoted(value) if must or draw(st.booleans()) else value)
        line = separator.join(fields)
        lines.append(line if line else quoted(""))  # a one-column empty row: not a blank line
    text = end.join(lines) + (end if draw(st.booleans()) else "")
    return separator, rows, text.encode("utf-8"), key_column


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=csv_files(), target=st.integers(1, 400), keyed=st.booleans())
def test_blocks_equal_the_python_encoding(
    tmp_path: Path, case: tuple[str, list[list[str]], bytes, int], target: int, keyed: bool
) -> None:
    separator, rows, data, key_column = case
    path = tmp_path / "T.sorted.csv"
    path.write_bytes(data)
    text = data.decode("utf-8")
    oracle = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=separator) if row]
    assert oracle == rows  # the file says what the strategy meant
    blocks = encoded_blocks(path, separator, [key_column] if keyed else [], target)
    data_out = b"".join(blocks)
    assert data_out == SIGNATURE + reference_tuples(rows[1:]) + TRAILER
    # Blocks are whole rows of at least the target, but for the last one.
    assert all(len(block) >= target for block in blocks[:-1])


def test_wide_rows_and_values_longer_than_a_read_block(tmp_path: Path) -> None:
    # 1 MiB is what the reader reads at a time: a row spanning several reads, 300 columns.
    big = "é" * 700_000 + '"x"'
    header = [f"c{index}" for index in range(300)]
    rows = [
        ["k1", *(["v", ""] * 149), big],
        ["k2", *([big[:10]] * 299)],
    ]
    lines = [",".join(header)] + [",".join(quoted(value) for value in row) for row in rows]
    path = tmp_path / "W.sorted.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    blocks = encoded_blocks(path, ",", [0], 1 << 20)
    assert b"".join(blocks) == SIGNATURE + reference_tuples(rows) + TRAILER


def test_an_empty_file_body_is_the_signature_and_the_trailer(tmp_path: Path) -> None:
    path = tmp_path / "E.sorted.csv"
    path.write_bytes(b"id,v\n")
    assert encoded_blocks(path, ",", [0], 100) == [SIGNATURE + TRAILER]


def test_link_rows_and_keys_are_counted_as_rows_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "E.sorted.csv"
    path.write_text('id,p,q\n1,a,b\n2,,b\n3,a,""\n4,"x,y",z\n')
    reader = UploadReader(str(path), path.name, ",")
    reader.header()
    reader.configure([0], True, [(1, 2), (0, 1)])
    while reader.copy_block(8):
        pass
    reader.close()
    assert reader.link_rows == [2, 3]
    assert reader.rows_read == 4


def test_unconfigured_or_closed_readers_refuse(tmp_path: Path) -> None:
    path = tmp_path / "T.sorted.csv"
    path.write_bytes(b"id\n1\n")
    reader = UploadReader(str(path), path.name, ",")
    reader.header()
    with pytest.raises(ValueError, match="configured"):
        reader.copy_block(10)
    reader.configure([0], True)
    with pytest.raises(ValueError, match="at least 1"):
        reader.copy_block(0)
    reader.close()
    with pytest.raises(ValueError, match="open"):
        reader.copy_block(10)
