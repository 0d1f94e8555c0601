"""Test oracle: a plain, in-memory, obviously-correct model of REFERENCE §2-§4 and docs/DESIGN.md.

The native engine is checked byte for byte against this module on generated inputs, so this
module favours clarity over speed: whole files in memory, lists, dicts and ``sorted()``.  It
shares no code with the engine (only the exception classes of ``prepsync.errors``), and parses
CSV itself rather than with the ``csv`` module, whose corner cases differ from the dialect.

Decisions the spec and DESIGN.md leave open are marked ``DECISION`` below.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prepsync.errors import BaselineError, InputError

BOM = b"\xef\xbb\xbf"
COMMANDS = (b"insert", b"update", b"delete", b"merge")
# Accepted spellings (any ASCII case) and the command each means: Workday writes "Add".
SPELLINGS = {**{command: command for command in COMMANDS}, b"add": b"merge"}
EXPECTED_COMMANDS = "insert, update, delete, merge or add"
MODES = ("initial", "complete", "incremental")
# Byte-order marks of encodings that are not UTF-8 (UTF-32 LE first: it starts like UTF-16 LE).
# A baseline (which prepsync writes) is refused with them; a source is read as what they say.
FOREIGN_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32 LE", "FF FE 00 00"),
    (b"\x00\x00\xfe\xff", "UTF-32 BE", "00 00 FE FF"),
    (b"\xff\xfe", "UTF-16 LE", "FF FE"),
    (b"\xfe\xff", "UTF-16 BE", "FE FF"),
)


def type_line_problem(skip_lines: int = 0) -> str:
    where = "header" if skip_lines else "first"
    return (
        f"the {where} line is PowerShell type information ('#TYPE ...'), not a header: "
        "export with Export-Csv -NoTypeInformation (Windows PowerShell 5.1; PowerShell 7 "
        "writes the line only when given -IncludeTypeInformation), or skip it with "
        f"--skip-lines {skip_lines + 1}"
    )


TYPE_LINE_PROBLEM = type_line_problem()
CR_ONLY_PROBLEM = (
    "bare CR in the header line: the file has CR-only line ends (classic Mac OS, Excel's "
    '"CSV (Macintosh)"); save it with LF or CRLF line ends'
)
LIKELY_SEPARATORS = (b",", b";", b"\t", b"|")


@dataclass(frozen=True)
class Reading:
    """How a source is read (prepsync.dialect.ReadSettings): ``encoding`` is a Python codec
    name for a BOM-less file (None: UTF-8); ``trim`` the characters to trim, in order."""

    encoding: str | None = None
    skip_lines: int = 0
    trim: tuple[str, ...] = ()
    separator: str | None = None  # the source's; None: the outputs'


# Byte-order marks a source may start with, and what they make it (UTF-8's stays in the text).
SOURCE_MARKS = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
KIND_NAMES = {
    "utf-16-le": "UTF-16 LE",
    "utf-16-be": "UTF-16 BE",
    "utf-32-le": "UTF-32 LE",
    "utf-32-be": "UTF-32 BE",
}
# A header's first four bytes with NULs where UTF-16/32 without a byte-order mark puts them.
NUL_SHAPES = (
    ((False, True, True, True), "UTF-32 LE", "utf-32le"),
    ((True, True, True, False), "UTF-32 BE", "utf-32be"),
    ((False, True, False, True), "UTF-16 LE", "utf-16le"),
    ((True, False, True, False), "UTF-16 BE", "utf-16be"),
)


class _NeedMore(Exception):
    """The text ends (at a bad character) where the reader needs more to decide."""


@dataclass
class _Text:
    """A source as the engine's tokenizer sees it: UTF-8, and where each byte is in the file."""

    data: bytes
    origin: list[int] | None  # file offset of the character holding each byte (+ the end)
    error: InputError | None  # the bad character the text stops at, if any

    def at(self, offset: int) -> int:
        return offset if self.origin is None else self.origin[offset]


def decode_source(data: bytes, path: str, encoding: str | None) -> _Text:
    """The file's text: a byte-order mark says what it is, else ``encoding``, else UTF-8.

    DECISION: a decoding error stops the text there; problems in the text before it (as a
    streaming reader meets them) come first. Offsets in the file are of the character's first
    byte (the BOM counts); the line is 1 + the LFs decoded before it.
    """
    codec = None
    start = 0
    for mark, kind in SOURCE_MARKS:
        if data.startswith(mark):
            codec, start = kind, (0 if kind == "utf-8" else len(mark))
            name = KIND_NAMES.get(kind, "UTF-8")
            break
    else:
        codec = codecs.lookup(encoding).name if encoding else "utf-8"
        codec = {"utf-16": "utf-16-le", "utf-32": "utf-32-le"}.get(codec, codec)
        name = KIND_NAMES.get(codec, encoding or "UTF-8")
    if codec == "utf-8":
        if encoding is None and len(data) >= 4:
            zeros = tuple(byte == 0 for byte in data[:4])
            for shape, shown, option in NUL_SHAPES:
                if zeros == shape:
                    raise InputError(
                        path,
                        f"not UTF-8: the file looks like {shown} without a byte-order mark (NUL "
                        f"bytes between its characters); read it with --encoding {option}",
                        1,
                        0,
                    )
        return _Text(data, None, None)
    out = bytearray()
    origin: list[int] = []
    error: tuple[int, str] | None = None
    i = start

    def put(char: str, at: int) -> None:
        utf8 = char.encode("utf-8")
        out.extend(utf8)
        origin.extend([at] * len(utf8))

    if codec.startswith("utf-16"):
        order = "little" if codec.endswith("le") else "big"
        while i + 2 <= len(data):
            unit = int.from_bytes(data[i : i + 2], order)
            if not 0xD800 <= unit <= 0xDFFF:
                put(chr(unit), i)
                i += 2
                continue
            low = int.from_bytes(data[i + 2 : i + 4], order) if i + 4 <= len(data) else 0
            if unit <= 0xDBFF and 0xDC00 <= low <= 0xDFFF:
                put(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)), i)
                i += 4
                continue
            error = (i, f"invalid {name}: unpaired surrogate 0x{unit:04X}")
            break
        if error is None and i < len(data):
            error = (i, f"invalid {name}: the file ends inside a character")
    elif codec.startswith("utf-32"):
        order = "little" if codec.endswith("le") else "big"
        while i + 4 <= len(data):
            point = int.from_bytes(data[i : i + 4], order)
            if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
                error = (i, f"invalid {name}: 0x{point:08X} is not a character")
                break
            put(chr(point), i)
            i += 4
        if error is None and i < len(data):
            error = (i, f"invalid {name}: the file ends inside a character")
    else:
        while i < len(data):
            try:
                char = data[i : i + 1].decode(codec)
            except UnicodeDecodeError:
                error = (i, f"byte 0x{data[i]:02X} is no character in {encoding}")
                break
            put(char, i)
            i += 1
    origin.append(i)
    problem = None
    if error is not None:
        at, message = error
        line = 1 + bytes(out).count(b"\n")
        problem = InputError(path, message, line, at)
    return _Text(bytes(out), origin, problem)


class TableSpecLike(Protocol):
    """The part of ``prepsync.config.TableSpec`` the reference reads (duck-typed on purpose)."""

    @property
    def name(self) -> str: ...

    @property
    def columns(self) -> tuple[str, ...]: ...

    @property
    def key(self) -> tuple[str, ...] | None: ...


@dataclass
class ReferenceResult:
    """Expected output files (by kind) and per-table counts of one prepare."""

    # "sorted", "nullpk", "duplicates"; "delta" in incremental mode.  An incremental change
    # file has no "sorted" (it is not a full extract and must never become a baseline).
    files: dict[str, bytes]
    rows_read: int
    kept: int
    null_keys: int
    duplicates: int
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    merges: int = 0


# ------------------------------------------------------------------------------------------
# CSV input (REFERENCE §2; DESIGN.md "CSV input" and "Error messages")


@dataclass(frozen=True)
class Record:
    """One parsed row: where it starts (1-based physical line, 0-based file offset) and values."""

    line: int
    offset: int
    fields: list[bytes]
    starts: list[int] = field(default_factory=list)  # file offset of each field (its quote)


def parse_csv(data: bytes, separator: bytes, path: str) -> list[tuple[int, list[bytes]]]:
    """Every row, header first, as (start line, values); raises InputError on the first bad row."""
    return [(record.line, record.fields) for record in iter_records(data, separator, path)]


def iter_records(
    data: bytes, separator: bytes, path: str, reading: Reading | None = None
) -> Iterator[Record]:
    """Rows one at a time, so that a caller can check the header before later rows fail.

    Without ``reading`` the file is a baseline: UTF-8 only, a UTF-16/32 byte-order mark refused.
    With it, a source (prepsync.dialect.ReadSettings): decoded (decode_source), an Excel
    ``sep=X`` first line honoured, ``skip_lines`` lines dropped before the header, values
    trimmed, and errors that name their likely cause.

    Within a row the checks run in DESIGN.md's order: the row is tokenized first (text after
    closing quote / unterminated quote), then checked to be UTF-8, then its width is checked.
    Before the header is tokenized, a PowerShell ``#TYPE`` line is refused; while it is, a bare
    CR outside quotes (CR-only line ends). Offsets and lines are the file's.
    """
    _check_separator(separator)
    if reading is None:
        for mark, encoding, shown in FOREIGN_MARKS:
            if data.startswith(mark):
                raise InputError(
                    path,
                    f"{encoding} file (byte-order mark {shown}): save it as UTF-8 "
                    "(Windows PowerShell: Export-Csv -Encoding UTF8)",
                    1,
                    0,
                )
        text = _Text(data, None, None)
    else:
        text = decode_source(data, path, reading.encoding)
    try:
        yield from _records(text, separator, path, reading)
    except _NeedMore:
        assert text.error is not None
        raise text.error from None
    except InputError as error:
        if text.origin is None or error.problem == "empty file (no header)":
            raise
        # The text's offsets, mapped back to the file's bytes.
        raise InputError(path, error.problem, error.line, text.at(error.offset or 0)) from None


def _records(text: _Text, separator: bytes, path: str, reading: Reading | None) -> Iterator[Record]:
    data = text.data
    more = text.error is not None  # the text stops at a bad character: more would follow
    hints = reading is not None

    def need(upto: int) -> None:
        """The engine waits for bytes up to ``upto`` (or the end of the file) to decide."""
        if more and upto > len(data):
            raise _NeedMore

    need(4)
    pos = len(BOM) if data.startswith(BOM) else 0
    skip = reading.skip_lines if reading else 0
    requested = skip
    if reading is not None:
        need(pos + 7)
        if (
            data[pos : pos + 3].lower() == b"sep"
            and data[pos + 3 : pos + 4] == b"="
            and len(data) >= pos + 5
        ):
            rest = data[pos + 5 : pos + 7]
            ending = (
                0
                if len(data) == pos + 5
                else 1
                if rest[:1] == b"\n"
                else 2
                if rest == b"\r\n"
                else None
            )
            if ending is not None:
                named = data[pos + 4]
                if named == 0 or named >= 0x80 or named in b'"\r\n':
                    raise InputError(
                        path,
                        f"the first line 'sep=' names byte 0x{named:02X} as the separator, which "
                        "prepsync cannot use (one ASCII character other than a quote, CR or LF)",
                        1,
                        pos,
                    )
                separator = bytes([named])
                pos += 5 + ending
                skip = max(0, skip - 1)
    while skip > 0:
        lf = data.find(b"\n", pos)
        if lf < 0:
            need(len(data) + 1)
            raise InputError(
                path,
                f"the file ends before its header: {requested} line(s) to skip (--skip-lines)",
                _line_at(data, len(data)),
                len(data),
            )
        pos = lf + 1
        skip -= 1
    trim = [char.encode("utf-8") for char in reading.trim] if reading else []
    width: int | None = None
    while True:
        pos = _skip_blank_lines(data, pos, more)
        if pos >= len(data):
            need(len(data) + 1)
            break
        line = _line_at(data, pos)
        header = width is None
        if header:
            need(pos + 6)
            if data.startswith(b"#TYPE ", pos):
                raise InputError(path, type_line_problem(requested), line, pos)
        fields, starts, end = _read_record(data, pos, separator, path, line, header, more)
        _check_utf8(data, pos, end, path, line, hints)
        if width is None:
            width = len(fields)  # the header fixes the width of every row
        elif len(fields) != width:
            problem = f"expected {width} fields, found {len(fields)}"
            other = _other_separator(data[pos:end], separator, width) if hints else None
            if other is not None:
                shown = {b"\t": "tabs", b",": "','", b";": "';'", b"|": "'|'"}[other]
                problem += (
                    f" (split on {shown} it has {width}: was it written with that separator? "
                    "--separator reads it)"
                )
            raise InputError(path, problem, line, pos)
        if trim:
            fields = [_trimmed(value, trim) for value in fields]
        yield Record(line, text.at(pos), fields, [text.at(start) for start in starts])
        pos = end
    if width is None:
        # 0 bytes, only a BOM, or only blank lines.
        raise InputError(path, "empty file (no header)", 1, 0)


def _trimmed(value: bytes, trim: list[bytes]) -> bytes:
    """ValuesToTrim: each character in turn, every repeat of it at both ends of the value."""
    for char in trim:
        while value.startswith(char):
            value = value[len(char) :]
        while value.endswith(char):
            value = value[: -len(char)]
    return value


def _other_separator(raw: bytes, separator: bytes, width: int) -> bytes | None:
    """A likely separator other than ``separator`` of which the row's raw bytes hold one less
    than the header's width: the row was probably written with it."""
    for other in LIKELY_SEPARATORS:
        if other != separator and raw.count(other) + 1 == width:
            return other
    return None


def _check_separator(separator: bytes) -> None:
    if len(separator) != 1 or separator in b'"\r\n' or separator[0] > 0x7F:
        raise ValueError(f"bad separator {separator!r}")


def _line_at(data: bytes, pos: int) -> int:
    """Physical 1-based line of a byte: only LF ends a physical line (CRLF holds one LF)."""
    return 1 + data.count(b"\n", 0, pos)


def _skip_blank_lines(data: bytes, pos: int, more: bool = False) -> int:
    """A line with no bytes at all is not a row (DESIGN.md); only called at a row start."""
    while True:
        if data[pos : pos + 1] == b"\n":
            pos += 1
        elif data[pos : pos + 2] == b"\r\n":
            pos += 2
        elif more and data[pos:] == b"\r":
            raise _NeedMore
        else:
            return pos


def _line_end_length(data: bytes, pos: int) -> int:
    """2 for CRLF, 1 for LF, 0 otherwise (a lone CR does not end a row)."""
    if data[pos : pos + 1] == b"\n":
        return 1
    if data[pos : pos + 2] == b"\r\n":
        return 2
    return 0


def _read_record(
    data: bytes,
    pos: int,
    separator: bytes,
    path: str,
    line: int,
    header: bool = False,
    more: bool = False,
) -> tuple[list[bytes], list[int], int]:
    """The values of the row starting at ``pos``, where each starts, and the offset just past
    its line end.  In the header, a CR outside quotes that is no CRLF is refused.  ``more``:
    the data stops short of the file's end (_NeedMore where the engine would wait)."""
    fields: list[bytes] = []
    starts: list[int] = []
    while True:
        starts.append(pos)
        if data[pos : pos + 1] == b'"':
            value, pos = _read_quoted(data, pos, path, line, more)
        else:
            value, pos = _read_unquoted(data, pos, separator, path, line, header, more)
        fields.append(value)
        if pos >= len(data):
            return fields, starts, pos  # last row without a line end
        if data[pos : pos + 1] == separator:
            pos += 1  # a separator always starts one more field (so "a," is two fields)
            continue
        if more and data[pos:] == b"\r":
            raise _NeedMore
        ending = _line_end_length(data, pos)
        if ending:
            return fields, starts, pos + ending
        # Only reachable after a quoted field: an unquoted one stops only at these three.
        if header and data[pos : pos + 1] == b"\r":
            raise InputError(path, CR_ONLY_PROBLEM, line, pos)
        raise InputError(path, "text after closing quote", line, pos)


def _read_unquoted(
    data: bytes,
    pos: int,
    separator: bytes,
    path: str = "",
    line: int = 0,
    header: bool = False,
    more: bool = False,
) -> tuple[bytes, int]:
    """Up to the separator, a line end or the end; quotes and lone CRs are plain value bytes
    (in the header a lone CR is refused where it stands)."""
    start = pos
    while pos < len(data) and data[pos : pos + 1] != separator and not _line_end_length(data, pos):
        if data[pos : pos + 1] == b"\r":
            if more and pos + 1 == len(data):
                raise _NeedMore
            if header:
                raise InputError(path, CR_ONLY_PROBLEM, line, pos)
        pos += 1
    if more and pos >= len(data):
        raise _NeedMore
    return data[start:pos], pos


def _read_quoted(
    data: bytes, pos: int, path: str, line: int, more: bool = False
) -> tuple[bytes, int]:
    """From the opening quote to just past the closing one; ``""`` inside is one quote."""
    opening = pos
    value = bytearray()
    pos += 1
    while True:
        if pos >= len(data):
            if more:
                raise _NeedMore
            raise InputError(path, "unterminated quote", line, opening)
        if data[pos : pos + 1] != b'"':
            value += data[pos : pos + 1]
            pos += 1
        elif more and pos + 1 == len(data):
            raise _NeedMore
        elif data[pos + 1 : pos + 2] == b'"':
            value += b'"'
            pos += 2
        else:
            return bytes(value), pos + 1


def _check_utf8(
    data: bytes, start: int, end: int, path: str, line: int, hints: bool = False
) -> None:
    """The row's raw bytes must be UTF-8.

    Checking the raw row equals checking each value: separators, quotes and line ends are ASCII
    and never sit inside a multi-byte sequence.  DECISION: the offset is where Python's strict
    decoder says the bad sequence starts (the lead byte of a truncated sequence, the first byte
    of a surrogate or overlong form); the line is the row's start line, as the brief and
    DESIGN.md's "Error messages" say (its "Line numbers" note says the bad byte's own line).
    """
    try:
        data[start:end].decode("utf-8")
    except UnicodeDecodeError as error:
        problem = "invalid UTF-8"
        byte = data[start + error.start]
        if hints and byte < 0xA0:
            problem += (
                f" (byte 0x{byte:02X}: likely Windows-1252, read it with --encoding windows-1252)"
            )
        elif hints:
            problem += (
                f" (byte 0x{byte:02X}: likely a single-byte code page such as Windows-1252 or "
                "Latin-1, read it with --encoding NAME)"
            )
        raise InputError(path, problem, line, start + error.start) from None


# ------------------------------------------------------------------------------------------
# CSV output (REFERENCE §2)


def format_row(values: Sequence[bytes], separator: bytes) -> bytes:
    """One output line with its LF; a field is quoted only when it holds sep, '"', CR or LF.

    A single empty value is written ``""``: an empty line would read back as no row.
    """
    if list(values) == [b""]:
        return b'""\n'
    return separator.join(_format_field(value, separator) for value in values) + b"\n"


def _format_field(value: bytes, separator: bytes) -> bytes:
    if any(special in value for special in (separator, b'"', b"\r", b"\n")):
        return b'"' + value.replace(b'"', b'""') + b'"'
    return value


def _format_file(header: Sequence[str], rows: Sequence[Sequence[bytes]], separator: bytes) -> bytes:
    lines = [format_row([name.encode() for name in header], separator)]
    lines += [format_row(row, separator) for row in rows]
    return b"".join(lines)


# ------------------------------------------------------------------------------------------
# Header: kept columns, key, command column (REFERENCE §1, §3.1, §4)


def fold(name: str) -> str:
    """Header and column names match case-insensitively, as prepsync.config does (casefold)."""
    return name.casefold()


@dataclass(frozen=True)
class Layout:
    """Where the outputs' values come from, as indexes into a source row."""

    kept: list[int]  # kept columns, in source header order
    key: list[int]  # key columns (spec.key order; source order for association tables)
    command: int | None  # a change file's command column


def _header_separator(names: list[str], spec: TableSpecLike, separator: str) -> str | None:
    """DECISION: a header lacking a column is re-split (names joined back with the separator
    read) on each likely separator; the first whose names, stripped of spaces and quotes, hold
    every column read is named."""
    wanted = {fold(name) for name in spec.columns}
    text = separator.join(names)
    for other in (",", ";", "\t", "|"):
        names_there = {fold(name.strip().strip('"')) for name in text.split(other)}
        if other != separator and other in text and wanted <= names_there:
            return other
    return None


def _layout(
    header: Record, spec: TableSpecLike, command_column: str, path: str, separator: str = ","
) -> Layout:
    """Header checks in this order: names read twice, missing columns (config order).

    Only the kept columns and the command column are read, so only they must be unambiguous:
    other names may be empty or repeated.  A repeated one is named as spelled the second time,
    at that name's offset; a missing one at the header's start.  DECISION: a command column
    that is also a kept column is that kept column, and the input is a plain full extract (the
    configuration asked for the column as data).
    """
    names = [value.decode("utf-8") for value in header.fields]
    wanted = {fold(name) for name in spec.columns}
    read = wanted | {fold(command_column)}
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if fold(name) in read:
            if fold(name) in seen:
                problem = f"duplicated header name '{name}'"
                raise InputError(path, problem, header.line, header.starts[index])
            seen[fold(name)] = index
    for name in spec.columns:
        if fold(name) not in seen:
            problem = f"column '{name}' is missing from the header"
            other = _header_separator(names, spec, separator)
            if other is not None:
                named = "tab" if other == "\t" else repr(other)
                shown = "tabs" if other == "\t" else f"'{other}'"
                problem += (
                    f" (the header splits on {shown} instead: set --separator {named}, or the "
                    "table's Separator)"
                )
            raise InputError(path, problem, header.line, header.offset)
    kept = sorted({seen[fold(name)] for name in spec.columns})
    key = list(kept) if spec.key is None else [seen[fold(name)] for name in spec.key]
    command = seen.get(fold(command_column))
    if command in kept:
        command = None
    return Layout(kept=kept, key=key, command=command)


# ------------------------------------------------------------------------------------------
# Cleansing (REFERENCE §3)


@dataclass(frozen=True)
class Row:
    """A projected input row: output values (command first in a change file) and its key.

    Rows stay in lists in input order, which is what "first/last occurrence" and duplicate ties
    refer to.
    """

    key: tuple[bytes, ...]
    values: tuple[bytes, ...]
    command: bytes | None = None  # lower-cased, change files only


def _command_of(record: Record, layout: Layout, replay: bool, path: str) -> bytes | None:
    """The row's command as written out (lower case; "add" is "merge").

    An empty command is an insert when the file is replayed (initial/complete) and an error in
    an incremental change file, where it would leave the change undefined.
    """
    if layout.command is None:
        return None
    value = record.fields[layout.command]
    if value == b"" and replay:
        return b"insert"
    if value == b"":
        raise InputError(
            path, f"empty command (expected {EXPECTED_COMMANDS})", record.line, record.offset
        )
    if value.lower() in SPELLINGS:  # ASCII-only folding: the spellings are ASCII
        return SPELLINGS[value.lower()]
    # DECISION: shown whole (no truncation), with CR/LF as spaces so the message stays one
    # line; offset = the row's start, like a field-count error.
    shown = value.decode("utf-8").replace("\r", " ").replace("\n", " ")
    raise InputError(
        path,
        f"invalid command '{shown}' (expected {EXPECTED_COMMANDS})",
        record.line,
        record.offset,
    )


def _project(records: Iterator[Record], layout: Layout, replay: bool, path: str) -> list[Row]:
    rows = []
    for record in records:
        command = _command_of(record, layout, replay, path)
        values = tuple(record.fields[i] for i in layout.kept)
        if command is not None:
            values = (command, *values)
        key = tuple(record.fields[i] for i in layout.key)
        rows.append(Row(key, values, command))
    return rows


@dataclass
class Cleansed:
    kept: list[Row] = field(default_factory=list)  # ascending by key, one per key
    nullpk: list[Row] = field(default_factory=list)  # input order
    duplicates: list[Row] = field(default_factory=list)  # by key, then input order


def cleanse(rows: list[Row], keep_last: bool, replay: bool = False) -> Cleansed:
    """REFERENCE §3.2-3.4: null keys apart, one row per key (first, or last for change files).

    ``replay`` (a change file in initial/complete mode): the stream is replayed from empty, so
    a key whose last command is ``delete`` is absent and that row joins the duplicates.
    """
    result = Cleansed()
    result.nullpk = [row for row in rows if b"" in row.key]  # null = ANY key value empty
    by_key: dict[tuple[bytes, ...], list[Row]] = {}
    for row in rows:
        if b"" not in row.key:
            by_key.setdefault(row.key, []).append(row)  # each list is in input order
    for key in sorted(by_key):  # tuple-of-bytes order is exactly REFERENCE §2's order
        group = by_key[key]
        winner = group[-1] if keep_last else group[0]
        if replay and winner.command == b"delete":
            result.duplicates += group  # superseded rows, then the final delete
            continue
        result.kept.append(winner)
        result.duplicates += [row for row in group if row is not winner]
    return result


# ------------------------------------------------------------------------------------------
# The whole prepare of one table (REFERENCE §3, §4)


def reference_prepare(
    data: bytes,
    spec: TableSpecLike,
    *,
    mode: str = "complete",
    baseline: bytes | None = None,
    command_column: str = "command",
    separator: str = ",",
    path: str = "<input>",
    baseline_path: str | None = None,
    reading: Reading | None = None,
) -> ReferenceResult:
    """What prepsync must write for one table; raises the InputError/BaselineError it must raise.

    ``baseline_path`` (only used in messages) defaults to ``previous/<table>.sorted.csv``.
    DECISION (error order when several things are wrong), as a streaming engine meets them:
    the input's header, then the baseline's presence and header (checked before the big input
    is read), then the input's rows, then the baseline's rows (read by the final merge-join).
    """
    mode = mode.lower()
    if mode not in MODES:
        raise ValueError(f"bad mode {mode!r}")
    sep = separator.encode("ascii")
    if baseline_path is None:
        baseline_path = f"previous/{spec.name}.sorted.csv"

    reading = reading or Reading()
    if data == b"":
        # DECISION (0 bytes: PowerShell's export of nothing): a table with no rows, its header
        # the baseline's when there is one, else the mapped columns in configuration order.
        names = [name.encode() for name in spec.columns]
        if baseline is not None:
            names = next(_baseline_records(baseline, sep, spec.name, baseline_path)).fields
        data = format_row(names, sep)
        reading = Reading()
    source_sep = (reading.separator or separator).encode("ascii")
    records = iter_records(data, source_sep, path, reading)
    header_record = next(records)
    header = [value.decode("utf-8") for value in header_record.fields]
    layout = _layout(header_record, spec, command_column, path, source_sep.decode())
    change_file = layout.command is not None
    replay = change_file and mode != "incremental"
    kept_names = [header[i] for i in layout.kept]
    old_records = None
    if mode == "incremental" and not change_file:
        if baseline is None:
            raise BaselineError(spec.name, f"no baseline {baseline_path}")
        old_records = _open_baseline(baseline, sep, spec.name, baseline_path, kept_names)

    rows = _project(records, layout, replay, path)
    cleansed = cleanse(rows, keep_last=change_file, replay=replay)
    # The command's header is "command" whatever the source spelled (REFERENCE §4).
    out_header = (["command"] if change_file else []) + kept_names
    result = ReferenceResult(
        files={
            "nullpk": _format_file(out_header, [row.values for row in cleansed.nullpk], sep),
            "duplicates": _format_file(
                out_header, [row.values for row in cleansed.duplicates], sep
            ),
        },
        rows_read=len(rows),
        kept=len(cleansed.kept),
        null_keys=len(cleansed.nullpk),
        duplicates=len(cleansed.duplicates),
    )
    if change_file and not replay:
        _add_change_delta(result, out_header, cleansed.kept, sep)
        return result
    # A full extract, or the table a replayed change file leaves: kept columns only.
    kept_rows = [row.values[1:] if replay else row.values for row in cleansed.kept]
    result.files["sorted"] = _format_file(kept_names, kept_rows, sep)
    if old_records is not None:
        key_positions = [layout.kept.index(i) for i in layout.key]
        old_rows = _baseline_rows(old_records, spec.name, key_positions)
        _add_full_delta(result, kept_names, old_rows, kept_rows, key_positions, sep)
    return result


def _add_change_delta(
    result: ReferenceResult, header: list[str], kept: list[Row], sep: bytes
) -> None:
    """A change file's delta is its cleansed rows, command first (already in the values)."""
    result.files["delta"] = _format_file(header, [row.values for row in kept], sep)
    commands = [row.command for row in kept]
    result.inserts = commands.count(b"insert")
    result.updates = commands.count(b"update")
    result.deletes = commands.count(b"delete")
    result.merges = commands.count(b"merge")


# ------------------------------------------------------------------------------------------
# Baseline and delta of a full extract (REFERENCE §4)


def _open_baseline(
    baseline: bytes, sep: bytes, table: str, baseline_path: str, kept_names: list[str]
) -> Iterator[Record]:
    """The baseline's data rows, once its header is checked to be the kept columns."""
    records = _baseline_records(baseline, sep, table, baseline_path)
    header = [value.decode("utf-8") for value in next(records).fields]
    if [fold(name) for name in header] != [fold(name) for name in kept_names]:
        raise BaselineError(table, "baseline header differs from the kept columns")
    return records


def _baseline_records(
    baseline: bytes, sep: bytes, table: str, baseline_path: str
) -> Iterator[Record]:
    """The baseline parsed like any input, its CSV errors reported as baseline errors."""
    try:
        yield from iter_records(baseline, sep, baseline_path)
    except InputError as error:
        raise BaselineError(
            table, f"baseline {baseline_path}, line {error.line}: {error.problem}"
        ) from None


def _baseline_rows(
    records: Iterator[Record], table: str, key_positions: list[int]
) -> list[tuple[bytes, ...]]:
    """The baseline's rows, checked to be strictly ascending by key.

    DECISION: a baseline row with an empty key value is not special; empty sorts first like any
    shorter prefix (prepsync never writes one: null keys never reach a .sorted.csv).
    """
    rows: list[tuple[bytes, ...]] = []
    previous: tuple[bytes, ...] | None = None
    for record in records:
        key = tuple(record.fields[i] for i in key_positions)
        if previous is not None and key == previous:
            raise BaselineError(table, f"baseline has a duplicate key at line {record.line}")
        if previous is not None and key < previous:
            raise BaselineError(table, f"baseline is not sorted by key at line {record.line}")
        previous = key
        rows.append(tuple(record.fields))
    return rows


def _add_full_delta(
    result: ReferenceResult,
    kept_names: list[str],
    old_rows: list[tuple[bytes, ...]],
    new_rows: list[tuple[bytes, ...]],
    key_positions: list[int],
    sep: bytes,
) -> None:
    """insert / update (new values) / delete (baseline values), in key order; unchanged left out.

    A dict join instead of the engine's streaming merge-join: same result, obviously right.
    """
    old = {tuple(row[i] for i in key_positions): row for row in old_rows}
    new = {tuple(row[i] for i in key_positions): row for row in new_rows}
    delta: list[tuple[bytes, ...]] = []
    for key in sorted(old.keys() | new.keys()):
        if key not in old:
            delta.append((b"insert", *new[key]))
        elif key not in new:
            delta.append((b"delete", *old[key]))
        elif old[key] != new[key]:
            delta.append((b"update", *new[key]))
    # The delta's first header is the literal "command" (REFERENCE §4), whatever --command-column.
    result.files["delta"] = _format_file(["command", *kept_names], delta, sep)
    commands = [row[0] for row in delta]
    result.inserts = commands.count(b"insert")
    result.updates = commands.count(b"update")
    result.deletes = commands.count(b"delete")
