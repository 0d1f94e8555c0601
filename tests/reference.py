"""Test oracle: a plain, in-memory, obviously-correct model of REFERENCE §2-§4 and docs/DESIGN.md.

The native engine is checked byte for byte against this module on generated inputs, so this
module favours clarity over speed: whole files in memory, lists, dicts and ``sorted()``.  It
shares no code with the engine (only the exception classes of ``prepsync.errors``), and parses
CSV itself rather than with the ``csv`` module, whose corner cases differ from the dialect.

Decisions the spec and DESIGN.md leave open are marked ``DECISION`` below.
"""

from __future__ import annotations

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
FOREIGN_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32 LE", "FF FE 00 00"),
    (b"\x00\x00\xfe\xff", "UTF-32 BE", "00 00 FE FF"),
    (b"\xff\xfe", "UTF-16 LE", "FF FE"),
    (b"\xfe\xff", "UTF-16 BE", "FE FF"),
)
TYPE_LINE_PROBLEM = (
    "the first line is PowerShell type information ('#TYPE ...'), not a header: "
    "export with Export-Csv -NoTypeInformation"
)
CR_ONLY_PROBLEM = (
    "bare CR in the header line: the file has CR-only line ends (classic Mac OS, Excel's "
    '"CSV (Macintosh)"); save it with LF or CRLF line ends'
)


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


def iter_records(data: bytes, separator: bytes, path: str) -> Iterator[Record]:
    """Rows one at a time, so that a caller can check the header before later rows fail.

    Within a row the checks run in DESIGN.md's order: the row is tokenized first (text after
    closing quote / unterminated quote), then checked to be UTF-8, then its width is checked.
    Before anything, a UTF-16/32 byte-order mark is refused; before the header is tokenized, a
    PowerShell ``#TYPE`` line; while it is, a bare CR outside quotes (CR-only line ends).
    """
    _check_separator(separator)
    for mark, encoding, shown in FOREIGN_MARKS:
        if data.startswith(mark):
            raise InputError(
                path,
                f"{encoding} file (byte-order mark {shown}): save it as UTF-8 "
                "(Windows PowerShell: Export-Csv -Encoding UTF8)",
                1,
                0,
            )
    pos = len(BOM) if data.startswith(BOM) else 0
    width: int | None = None
    while True:
        pos = _skip_blank_lines(data, pos)
        if pos >= len(data):
            break
        line = _line_at(data, pos)
        header = width is None
        if header and data.startswith(b"#TYPE ", pos):
            raise InputError(path, TYPE_LINE_PROBLEM, line, pos)
        fields, starts, end = _read_record(data, pos, separator, path, line, header)
        _check_utf8(data, pos, end, path, line)
        if width is None:
            width = len(fields)  # the header fixes the width of every row
        elif len(fields) != width:
            raise InputError(path, f"expected {width} fields, found {len(fields)}", line, pos)
        yield Record(line, pos, fields, starts)
        pos = end
    if width is None:
        # 0 bytes, only a BOM, or only blank lines.
        raise InputError(path, "empty file (no header)", 1, 0)


def _check_separator(separator: bytes) -> None:
    if len(separator) != 1 or separator in b'"\r\n' or separator[0] > 0x7F:
        raise ValueError(f"bad separator {separator!r}")


def _line_at(data: bytes, pos: int) -> int:
    """Physical 1-based line of a byte: only LF ends a physical line (CRLF holds one LF)."""
    return 1 + data.count(b"\n", 0, pos)


def _skip_blank_lines(data: bytes, pos: int) -> int:
    """A line with no bytes at all is not a row (DESIGN.md); only called at a row start."""
    while True:
        if data[pos : pos + 1] == b"\n":
            pos += 1
        elif data[pos : pos + 2] == b"\r\n":
            pos += 2
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
    data: bytes, pos: int, separator: bytes, path: str, line: int, header: bool = False
) -> tuple[list[bytes], list[int], int]:
    """The values of the row starting at ``pos``, where each starts, and the offset just past
    its line end.  In the header, a CR outside quotes that is no CRLF is refused."""
    fields: list[bytes] = []
    starts: list[int] = []
    while True:
        starts.append(pos)
        if data[pos : pos + 1] == b'"':
            value, pos = _read_quoted(data, pos, path, line)
        else:
            start = pos
            value, pos = _read_unquoted(data, pos, separator)
            if header and b"\r" in value:
                raise InputError(path, CR_ONLY_PROBLEM, line, start + value.index(b"\r"))
        fields.append(value)
        if pos >= len(data):
            return fields, starts, pos  # last row without a line end
        if data[pos : pos + 1] == separator:
            pos += 1  # a separator always starts one more field (so "a," is two fields)
            continue
        ending = _line_end_length(data, pos)
        if ending:
            return fields, starts, pos + ending
        # Only reachable after a quoted field: an unquoted one stops only at these three.
        if header and data[pos : pos + 1] == b"\r":
            raise InputError(path, CR_ONLY_PROBLEM, line, pos)
        raise InputError(path, "text after closing quote", line, pos)


def _read_unquoted(data: bytes, pos: int, separator: bytes) -> tuple[bytes, int]:
    """Up to the separator, a line end or the end; quotes and lone CRs are plain value bytes."""
    start = pos
    while pos < len(data) and data[pos : pos + 1] != separator and not _line_end_length(data, pos):
        pos += 1
    return data[start:pos], pos


def _read_quoted(data: bytes, pos: int, path: str, line: int) -> tuple[bytes, int]:
    """From the opening quote to just past the closing one; ``""`` inside is one quote."""
    opening = pos
    value = bytearray()
    pos += 1
    while True:
        if pos >= len(data):
            raise InputError(path, "unterminated quote", line, opening)
        if data[pos : pos + 1] != b'"':
            value += data[pos : pos + 1]
            pos += 1
        elif data[pos + 1 : pos + 2] == b'"':
            value += b'"'
            pos += 2
        else:
            return bytes(value), pos + 1


def _check_utf8(data: bytes, start: int, end: int, path: str, line: int) -> None:
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
        raise InputError(path, "invalid UTF-8", line, start + error.start) from None


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


def _layout(header: Record, spec: TableSpecLike, command_column: str, path: str) -> Layout:
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

    records = iter_records(data, sep, path)
    header_record = next(records)
    header = [value.decode("utf-8") for value in header_record.fields]
    layout = _layout(header_record, spec, command_column, path)
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
