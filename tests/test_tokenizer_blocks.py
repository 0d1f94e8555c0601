"""The tokenizer's vector paths at every position of their blocks.

An ordinary row is split by bit masks of 64 bytes at a time, taken where a field starts past
the last block; a row the masks cannot take (too near the end of what is buffered, a quote or
lone CR in a plain value, an error) is parsed by the general path, which looks at 16 bytes a
step. The UTF-8 check goes 32 bytes at a time. So a byte that matters behaves differently
depending on where it falls: in the first or last lane of a block, straddling two blocks, or in
the short tail that is checked on its own. These tests put each kind of byte at every offset of
a record across two blocks and more, with the file ending right after it (the general path) or
a long row later (the masks), and compare the engine with the plain-Python reference: same
output files, or the same error (line, byte offset, problem)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from reference import reference_prepare
from strategies import Spec

from prepsync import _cleanse
from prepsync.dialect import ReadSettings
from prepsync.errors import InputError
from prepsync.pipeline import ColumnPlan, EngineFiles
from prepsync.request import TableJob

SPEC = Spec("T", ("id", "value"), ("id",))
ASSOCIATION = Spec("A", ("left", "right"), None)  # keyed by both columns: a two-part key
KINDS = ("sorted", "nullpk", "duplicates")
UTF8_OFFSETS = range(0, 72)  # past two 32-byte blocks of the UTF-8 check, four of the scan
# After the rows under test: a row long enough that every byte of theirs has 64 bytes buffered
# past it, so that the bit masks, not the general path, split them.
LONG_LAST_ROW = b"zz," + b"t" * 140 + b"\n"
ENDINGS = {"file-ends-after": b"", "long-row-after": LONG_LAST_ROW}


def native(data: bytes, spec: Spec = SPEC) -> Any:
    """The engine alone (no staging, no fsync: thousands of tiny runs must take seconds): the
    output rows by kind, or the error."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.csv"
        source.write_bytes(data)
        outputs = {kind: open(Path(folder) / kind, "w+b") for kind in KINDS}  # noqa: SIM115
        try:
            with open(source, "rb") as reader:
                engine = _cleanse.Cleanser(
                    TableJob(
                        spec=spec,
                        source=source,
                        memory_budget=1 << 20,
                        settings=ReadSettings(),  # read as a source, as prepare does
                    ),
                    # The engine alone: the header is data to it, its columns given here.
                    ColumnPlan(
                        kept_names=list(spec.columns),
                        out_cols=[0, 1],
                        key_cols=[0] if spec.key else [0, 1],
                        command_col=-1,
                        baseline_key_cols=[],
                    ),
                    EngineFiles(
                        spill_dir=Path(folder),
                        sorted_fd=outputs["sorted"].fileno(),
                        nullpk_fd=outputs["nullpk"].fileno(),
                        duplicates_fd=outputs["duplicates"].fileno(),
                    ),
                )
                try:
                    while engine.read_from(reader.fileno(), 1 << 16):
                        pass
                    engine.finish_input()
                    while not engine.merge_step(1 << 20):
                        pass
                finally:
                    engine.close()
        except InputError as error:
            return ("InputError", error.line, error.offset, error.problem)
        finally:
            for out in outputs.values():
                out.close()
        rows = {kind: (Path(folder) / kind).read_bytes() for kind in KINDS}
        return {kind: body for kind, body in rows.items() if body}


def reference(data: bytes, spec: Spec = SPEC) -> Any:
    """The oracle's output rows by kind (its files less their header line), or its error."""
    try:
        result = reference_prepare(data, spec)
    except InputError as error:
        return ("InputError", error.line, error.offset, error.problem)
    rows = {kind: result.files.get(kind, b"").partition(b"\n")[2] for kind in KINDS}
    return {kind: body for kind, body in rows.items() if body}


def row_with(piece: bytes, at: int, fill: bytes = b"a") -> bytes:
    """A row `<id>,<value>` whose bytes `piece` start at offset `at` of the record (the id and
    its separator take the first two bytes when at >= 2), padded so it runs past the block."""
    if at < 2:
        return piece + fill * 2 + b"," + fill * 90
    return b"k," + fill * (at - 2) + piece + fill * 40


VALID = [
    "é".encode(),  # 2 bytes
    "€".encode(),  # 3 bytes
    "\U0001f600".encode(),  # 4 bytes
    "\U0010ffff".encode(),  # the largest code point
    "\ud7ff".encode(),  # just below the surrogates
    "\ue000".encode(),  # just above them
    "Ωж€\U0001f600".encode(),  # a run of sequences of every length
]

INVALID = [
    b"\x80",  # a lone continuation
    b"\xbf\xbf",  # two of them
    b"\xc3",  # a 2-byte lead cut short (by the next ASCII byte, or by the record's end)
    b"\xe2\x82",  # a 3-byte lead with one continuation
    b"\xf0\x9f\x98",  # a 4-byte lead with two
    b"\xc0\xaf",  # overlong 2-byte form
    b"\xe0\x80\xaf",  # overlong 3-byte form
    b"\xf0\x80\x80\xaf",  # overlong 4-byte form
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf5\x80\x80\x80",  # a lead byte that never occurs
    b"\xff",
    b"\xe2\x82\xac\x80",  # a valid sequence then one continuation too many
]


@pytest.mark.parametrize("after", ENDINGS.values(), ids=ENDINGS.keys())
def test_valid_multibyte_sequences_at_every_offset(after: bytes) -> None:
    for at in UTF8_OFFSETS:
        rows = [row_with(piece, at).replace(b"k,", b"k%d," % i, 1) for i, piece in enumerate(VALID)]
        data = b"id,value\n" + b"\n".join(rows) + b"\n" + after
        assert native(data) == reference(data), at


@pytest.mark.parametrize("after", ENDINGS.values(), ids=ENDINGS.keys())
@pytest.mark.parametrize("piece", INVALID, ids=lambda p: p.hex())
def test_invalid_utf8_is_named_at_its_byte_whatever_the_offset(piece: bytes, after: bytes) -> None:
    """The row before is not ASCII either, and neither is the start of this one when the bad
    bytes come late; the error names the first bad byte whichever 32-byte block holds it."""
    for at in UTF8_OFFSETS:
        data = (
            b"id,value\n1,caf\xc3\xa9\n"
            + row_with(piece, at, b"\xc3\xa9" if at > 40 else b"a")
            + b"\n"
            + after
        )
        want = reference(data)
        assert want[0] == "InputError" and want[3].startswith("invalid UTF-8 (byte 0x")
        assert native(data) == want, at


@pytest.mark.parametrize("piece", INVALID, ids=lambda p: p.hex())
def test_invalid_utf8_at_the_very_end_of_a_record(piece: bytes) -> None:
    """A sequence cut off by the end of the record (line end or end of file), the record ending
    at each offset around the ends of the first two blocks."""
    for length in [*range(1, 8), *range(28, 37), *range(60, 69)]:
        value = b"x" * max(0, length - 2 - len(piece)) + piece
        for ending in (b"\n", b"\r\n", b""):
            data = b"id,value\n1," + value + ending
            assert native(data) == reference(data), (length, ending)


STRUCTURE = {
    **{"separator": b",", "quote": b'"', "two-quotes": b'""', "cr": b"\r", "crlf": b"\r\n"},
    **{"lf": b"\n", "quote-sep": b'",', "quote-crlf": b'"\r\n'},
    **{"nul": b"\x00", "quote-nul": b'"\x00'},  # a NUL in a key column is escaped in a two-part key
}


@pytest.mark.parametrize("piece", STRUCTURE.values(), ids=STRUCTURE.keys())
@pytest.mark.parametrize("after", ENDINGS.values(), ids=ENDINGS.keys())
def test_structure_bytes_at_every_offset(piece: bytes, after: bytes) -> None:
    """A separator, quote, CR, LF or NUL at each lane of the 16-byte steps and of two 64-byte
    masks, in a plain value and inside a quoted one (where it is a value byte), for a one- and a
    two-part key."""
    for at in range(0, 36) if not after else range(0, 132):
        plain = b"id,value\n" + row_with(piece, at) + b"\nz,last\n" + after
        quoted_value = b'k,"' + b"a" * at + piece.replace(b'"', b'""') + b"b" * 40 + b'"'
        quoted = b"id,value\n" + quoted_value + b"\nz,last\n" + after
        # A bad row last: its error's line number counts the LFs of every row before it.
        for data in (plain, quoted, plain + b"bad,row,x\n", quoted + b"bad,row,x\n"):
            assert native(data) == reference(data), (at, data)
            header = data.replace(b"id,value", b"left,right", 1)
            assert native(header, ASSOCIATION) == reference(header, ASSOCIATION), (at, header)


def test_nul_in_a_two_part_key_at_every_offset() -> None:
    """In a key of several columns a NUL is escaped, so that a value sorts before its own
    extension by a NUL whatever the next column holds: (`p`, `z`) before (`p\\x00`, `a`). The
    NUL sits at each offset of the 16-byte steps that look for it, in plain, quoted and
    escaped (doubled-quote) values."""
    for at in range(0, 40):
        prefix = b"g" * at
        rows = [
            prefix + b"\x00tail,a",
            prefix + b",z",
            b'"' + prefix + b'\x00""q",b',
            prefix + b"\x00,y",
            b'"' + prefix + b'",x',
        ]
        data = b"left,right\n" + b"\n".join(rows) + b"\n"
        assert native(data, ASSOCIATION) == reference(data, ASSOCIATION), at


def test_rows_the_masks_hand_back_then_ordinary_ones() -> None:
    """Rows with a bare quote late in a plain value go to the general path; after a few in a
    row the masks rest for a while, then take rows again. Whichever path splits each row, the
    files and the line of a later error are the reference's."""
    odd = [b'o%03d,%s 12" screen' % (i, b"x" * 80) for i in range(10)]
    ordinary = [b'r%03d,"two\nlines, %s"' % (i, b"y" * (i % 90)) for i in range(150)]
    for rows in (odd + ordinary, ordinary[:3] + odd + ordinary[3:], (odd[:3] + ordinary[:5]) * 20):
        data = b"id,value\n" + b"\n".join(rows) + b"\n" + LONG_LAST_ROW
        assert native(data) == reference(data)
        bad = data + b"bad,row,x\n"
        assert native(bad) == reference(bad)


def test_without_avx2_the_same_splits_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the CPU has no AVX2 the masks are made 16 bytes a step and UTF-8 is checked a byte
    at a time. A debug build takes those paths under PREPSYNC_DEBUG_NO_AVX2=1 (`make test-asan`
    runs this): the tests above, again."""
    if not _cleanse.DEBUG_BUILD:
        pytest.skip("only a debug build can turn AVX2 off")
    monkeypatch.setenv("PREPSYNC_DEBUG_NO_AVX2", "1")
    test_rows_the_masks_hand_back_then_ordinary_ones()
    for after in ENDINGS.values():
        for piece in STRUCTURE.values():
            test_structure_bytes_at_every_offset(piece, after)
        test_valid_multibyte_sequences_at_every_offset(after)
        for piece in INVALID:
            test_invalid_utf8_is_named_at_its_byte_whatever_the_offset(piece, after)
