"""Hypothesis strategies for prepsync: tables, their CSV bytes, incremental pairs, change files
and malformed files together with the error they must raise.

Everything is kept small (a few columns, a few rows, values of a few bytes drawn from pools) so
that collisions the rules care about are frequent: duplicated keys, keys that are prefixes of
others, empty (null) values, separators, quotes, CR/LF, non-ASCII (2-, 3- and 4-byte UTF-8) and
NUL inside values, random quoting of fields that need none, LF/CRLF, BOM, blank lines.

Expected errors of malformed files are derived from how the defect was built, not from the
reference, so these cases check the reference (and the engine) independently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from hypothesis import assume
from hypothesis import strategies as st

BOM = b"\xef\xbb\xbf"

# Lower-case base spellings; none matches a command column ("command", "op").  Some hold a
# separator, a quote or non-ASCII so that the header itself needs quoting on output.
NAME_POOL = (
    "id",
    "dn",
    "name",
    "mail",
    "member",
    "parentdn",
    "objectguid",
    "first name",
    "naïve",
    "x,y",
    'q"t',
    "c;d",
    "e\tf",
    "ß",
)
TABLE_NAMES = ("ADExport_entries", "ADExport_members", "T")
SEPARATORS = (",", ",", ";", "\t", "|")  # "," twice: the default deserves more examples

# Pieces of values: ASCII, 2/3/4-byte UTF-8, U+FFFF (bytes EF BF BF sort before F0...), NUL,
# every separator, quote, CR, LF and CRLF.
ATOMS = (
    b"a",
    b"b",
    b"A",
    b"z",
    b" ",
    b"\xc3\xa9",
    b"\xe2\x82\xac",
    b"\xf0\x9f\x98\x80",
    b"\xef\xbf\xbf",
    b"\x00",
    b",",
    b";",
    b"\t",
    b"|",
    b'"',
    b"\r",
    b"\n",
    b"\r\n",
)
# Key values: empty (null), prefixes of one another (a < ab < abc), case, non-ASCII, specials.
KEY_POOL = (
    b"",
    b"a",
    b"ab",
    b"abc",
    b"b",
    b"A",
    b"\xc3\xa9",
    b"\xf0\x9f\x98\x80",
    b"\xef\xbf\xbf",
    b"a,b",
    b'a"b',
    b"a\nb",
    b"\x00",
    b" a",
    b"a\x00b",
    b"\x00\x01",  # the bytes a composite key writes for a NUL, as a value of its own
    b"x;y\t|z",
    b"a\rb",
    b"CN=Group 0001,OU=Groups,DC=corp",  # 16 bytes and more: the vector scans' paths
    b"CN=Group 0001 OU=Groups DC=corp",
)
COMMAND_WORDS = ("insert", "update", "delete", "merge", "add")
# Not a command: misspelt, padded, with a line break, non-ASCII, with a separator, too short.
BAD_COMMANDS = (
    b"insrt",
    b"insert ",
    b"delete\n",
    b"upsert",
    b"m\xc3\xa9rge",
    b"x,y",
    b"ad",
    b"addd",
)
# Names of columns nobody reads: empty, or repeated (case-insensitively) - both allowed.
FILLER_NAMES = ("", "x", "X", "junk")
# Foreign encodings as their byte-order marks betray them, with the name the error gives.
FOREIGN_MARKS = (
    (b"\xff\xfe", "UTF-16 LE", "FF FE", "utf-16-le"),
    (b"\xfe\xff", "UTF-16 BE", "FE FF", "utf-16-be"),
    (b"\xff\xfe\x00\x00", "UTF-32 LE", "FF FE 00 00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "UTF-32 BE", "00 00 FE FF", "utf-32-be"),
)
# Not UTF-8: stray continuation, invalid byte, truncated 2/3/4-byte sequences, surrogate,
# overlong, above U+10FFFF.
BAD_UTF8 = (
    b"\xff",
    b"\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf4\x90\x80\x80",
)
# Bytes after a closing quote that are neither a separator nor a line end.
# (A lone CR is not junk here: before the line end's LF it would make a valid CRLF.)
AFTER_QUOTE_JUNK = (b"x", b" ", b"\xc3\xa9", b"\xff", b"\rx")


@dataclass(frozen=True)
class Spec:
    """Duck type of ``prepsync.config.TableSpec`` (the reference reads name/columns/key)."""

    name: str
    columns: tuple[str, ...]  # kept columns as the configuration spells them, config order
    key: tuple[str, ...] | None  # None: association table keyed by all kept columns
    thresholds: Any = None


@dataclass(frozen=True)
class Encoded:
    """CSV bytes plus where each row (header first) starts."""

    data: bytes
    lines: tuple[int, ...]  # 1-based physical start line of each row
    offsets: tuple[int, ...]  # 0-based file offset (BOM included) of each row


@dataclass(frozen=True)
class CsvCase:
    """A well-formed input file and the table it encodes."""

    spec: Spec
    header: tuple[str, ...]  # source header as spelled in the file
    rows: tuple[tuple[bytes, ...], ...]
    data: bytes
    separator: str = ","
    command_column: str = "command"


@dataclass(frozen=True)
class IncrementalCase:
    """Two full extracts of one table: ``old`` makes the baseline, ``new`` is the run."""

    spec: Spec
    old: CsvCase
    new: CsvCase


@dataclass(frozen=True)
class MalformedCase:
    """An input with one defect and the exact InputError it must raise."""

    defect: str
    spec: Spec
    data: bytes
    separator: str
    mode: str
    command_column: str
    line: int
    problem: str  # exact text (a prefix check is also valid)
    offset: int | None  # exact; None where the error has no byte offset


# ------------------------------------------------------------------------------------------
# Names, specs, values


def fold(name: str) -> str:
    return name.casefold()


def ascii_lower(name: str) -> str:
    """The pool spelling of a drawn name (``spelled`` only upper-cases ASCII letters)."""
    return "".join(c.lower() if c.isascii() else c for c in name)


@st.composite
def spelled(draw: st.DrawFn, name: str) -> str:
    """``name`` with some ASCII letters upper-cased (only ASCII: no Unicode folding tricks)."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(
        c.upper() if flip and c.isascii() else c for c, flip in zip(name, flips, strict=True)
    )


@st.composite
def table_specs(
    draw: st.DrawFn, max_columns: int = 5, link: bool = False
) -> tuple[Spec, tuple[str, ...]]:
    """(spec, source header): some header columns kept, config spelling and order differing;
    sometimes unkept columns with empty or repeated names among them. ``link``: always an
    association table of two or three columns (like members: dn, member), whose records the
    engine stores as their key alone."""
    names = draw(
        st.lists(
            st.sampled_from(NAME_POOL),
            min_size=2 if link else 1,
            max_size=max_columns,
            unique=True,
        )
    )
    header = [draw(spelled(name)) for name in names]
    if link:
        positions = st.sampled_from(range(len(names)))
        kept = sorted(draw(st.lists(positions, min_size=2, max_size=3, unique=True)))
    else:
        flags = draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)))
        kept = [i for i, flag in enumerate(flags) if flag] or [draw(st.integers(0, len(names) - 1))]
    config_names = [draw(spelled(names[i])) for i in kept]
    columns = tuple(draw(st.permutations(config_names)))
    key = None if link or not draw(st.booleans()) else (draw(st.sampled_from(columns)),)
    if draw(st.integers(0, 3)) == 0:
        for filler in draw(st.lists(st.sampled_from(FILLER_NAMES), min_size=1, max_size=3)):
            header.insert(draw(st.integers(0, len(header))), filler)
    return Spec(draw(st.sampled_from(TABLE_NAMES)), columns, key), tuple(header)


def key_indexes(spec: Spec, header: Sequence[str]) -> set[int]:
    """Header positions of the key columns (to draw their values from a small pool)."""
    names = spec.columns if spec.key is None else spec.key
    wanted = {fold(name) for name in names}
    return {i for i, name in enumerate(header) if fold(name) in wanted}


def values() -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(ATOMS), max_size=3).map(b"".join)


def key_pools() -> st.SearchStrategy[list[bytes]]:
    """A few key values per case, so that keys collide (duplicates) and prefix one another."""
    return st.lists(st.sampled_from(KEY_POOL), min_size=1, max_size=4, unique=True)


def row_strategy(
    spec: Spec, header: Sequence[str], pool: Sequence[bytes]
) -> st.SearchStrategy[tuple[bytes, ...]]:
    keys = key_indexes(spec, header)
    parts = [st.sampled_from(pool) if i in keys else values() for i in range(len(header))]
    return st.tuples(*parts)


# ------------------------------------------------------------------------------------------
# Encoding a table as CSV bytes


def needs_quotes(value: bytes, separator: bytes, width: int) -> bool:
    """Whether a value cannot be written unquoted and read back as itself.

    Less than the output rule on purpose: a quote inside (not first) and a CR not ending the
    value are plain bytes in an unquoted field, which the generated files exercise.
    """
    if width == 1 and value == b"":
        return True  # an empty line would be a blank line, which is no row
    return (
        value.startswith(b'"')
        or separator in value
        or b"\n" in value
        or value.endswith(b"\r")  # a CR right before the line end's LF would make a CRLF
    )


def quote(value: bytes) -> bytes:
    return b'"' + value.replace(b'"', b'""') + b'"'


@st.composite
def encoded_field(draw: st.DrawFn, value: bytes, separator: bytes, width: int) -> bytes:
    if needs_quotes(value, separator, width) or draw(st.integers(0, 3)) == 0:
        return quote(value)
    return value


@st.composite
def encoded_body(draw: st.DrawFn, row: Sequence[bytes], separator: bytes) -> bytes:
    """One row without its line end."""
    return separator.join([draw(encoded_field(value, separator, len(row))) for value in row])


@st.composite
def assembled(draw: st.DrawFn, bodies: Sequence[bytes], tail: bytes | None = None) -> Encoded:
    """Rows joined with LF/CRLF, optional BOM, blank lines between data rows, optional final
    line end and trailing blank lines.  ``tail`` (raw bytes after the last body) overrides the
    final line end and trailing lines."""
    data = BOM if draw(st.booleans()) else b""
    lines: list[int] = []
    offsets: list[int] = []
    for index, body in enumerate(bodies):
        if index > 0 and draw(st.integers(0, 7)) == 0:
            data += draw(st.sampled_from([b"\n", b"\r\n", b"\n\r\n"]))
        lines.append(1 + data.count(b"\n"))
        offsets.append(len(data))
        data += body
        if index < len(bodies) - 1:
            data += draw(st.sampled_from([b"\n", b"\r\n"]))
    if tail is not None:
        data += tail
    elif draw(st.integers(0, 4)) > 0:  # usually a final line end, sometimes extra blank lines
        data += draw(st.sampled_from([b"\n", b"\r\n"]))
        data += draw(st.sampled_from([b"", b"", b"\n", b"\r\n", b"\n\r\n"]))
    return Encoded(data, tuple(lines), tuple(offsets))


@st.composite
def encoded_csv(
    draw: st.DrawFn, header: Sequence[str], rows: Sequence[Sequence[bytes]], separator: str
) -> Encoded:
    sep = separator.encode()
    table = [[name.encode() for name in header], *rows]
    return draw(assembled([draw(encoded_body(row, sep)) for row in table]))


def separators() -> st.SearchStrategy[str]:
    return st.sampled_from(SEPARATORS)


# ------------------------------------------------------------------------------------------
# Well-formed cases


@st.composite
def csv_cases(draw: st.DrawFn, max_rows: int = 8, min_rows: int = 0, link: bool = False) -> CsvCase:
    """A full extract: entity or association table, small key pool, random encoding;
    sometimes the file ends in a lone CR that belongs to the last value."""
    separator = draw(separators())
    spec, header = draw(table_specs(link=link))
    pool = draw(key_pools())
    rows = draw(st.lists(row_strategy(spec, header, pool), min_size=min_rows, max_size=max_rows))
    if rows and draw(st.integers(0, 3)) == 0:
        return draw(_ending_in_lone_cr(spec, header, rows, separator))
    encoded = draw(encoded_csv(header, rows, separator))
    return CsvCase(spec, header, tuple(rows), encoded.data, separator)


@st.composite
def _ending_in_lone_cr(
    draw: st.DrawFn,
    spec: Spec,
    header: Sequence[str],
    rows: list[tuple[bytes, ...]],
    separator: str,
) -> CsvCase:
    """The last value gets a CR and is written unquoted, with no line end after it: that CR
    is a value byte like any CR not followed by LF."""
    sep = separator.encode()
    last = rows[-1][-1]
    rows = [*rows[:-1], (*rows[-1][:-1], last + b"\r")]
    bodies = [draw(encoded_body(row, sep)) for row in [[n.encode() for n in header], *rows]]
    head = [draw(encoded_field(value, sep, len(header))) for value in rows[-1][:-1]]
    plain = last + b"\r"
    if needs_quotes(last, sep, 2):
        plain = quote(plain)
    bodies[-1] = b"".join(field + sep for field in head) + plain
    encoded = draw(assembled(bodies, tail=b""))
    return CsvCase(spec, tuple(header), tuple(rows), encoded.data, separator)


@st.composite
def _next_version(
    draw: st.DrawFn,
    spec: Spec,
    header: Sequence[str],
    pool: Sequence[bytes],
    old: Sequence[tuple[bytes, ...]],
) -> list[tuple[bytes, ...]]:
    """The new extract: each old row kept, changed (one value redrawn) or dropped, plus new
    rows, in a new order."""
    keys = key_indexes(spec, header)
    rows: list[tuple[bytes, ...]] = []
    for row in old:
        action = draw(st.sampled_from(["keep", "keep", "change", "drop"]))
        if action == "change":
            column = draw(st.integers(0, len(row) - 1))
            value = draw(st.sampled_from(pool) if column in keys else values())
            row = (*row[:column], value, *row[column + 1 :])
        if action != "drop":
            rows.append(row)
    rows += draw(st.lists(row_strategy(spec, header, pool), max_size=4))
    return list(draw(st.permutations(rows)))


@st.composite
def incremental_cases(draw: st.DrawFn, link: bool = False) -> IncrementalCase:
    """(old, new) full extracts of one table with the same kept columns in the same order; the
    header spelling may change between them (names match case-insensitively)."""
    separator = draw(separators())
    spec, header = draw(table_specs(link=link))
    pool = draw(key_pools())
    old_rows = draw(st.lists(row_strategy(spec, header, pool), max_size=8))
    new_rows = draw(_next_version(spec, header, pool, old_rows))
    new_header = tuple([draw(spelled(ascii_lower(name))) for name in header])
    old_data = draw(encoded_csv(header, old_rows, separator)).data
    new_data = draw(encoded_csv(new_header, new_rows, separator)).data
    return IncrementalCase(
        spec,
        CsvCase(spec, header, tuple(old_rows), old_data, separator),
        CsvCase(spec, new_header, tuple(new_rows), new_data, separator),
    )


@st.composite
def _change_table(
    draw: st.DrawFn, min_rows: int = 0, empty_commands: bool = False
) -> tuple[Spec, list[str], list[list[bytes]], str, int]:
    """(spec, header, rows, command_column, command position) of a change file; commands in
    any case, Workday's "add" among them, and empty ones if ``empty_commands``."""
    spec, header = draw(table_specs())
    pool = draw(key_pools())
    rows = draw(st.lists(row_strategy(spec, header, pool), min_size=min_rows, max_size=8))
    command_column = draw(st.sampled_from(["command", "command", "Op"]))
    position = draw(st.integers(0, len(header)))
    full_header = list(header)
    full_header.insert(position, draw(spelled(command_column.lower())))
    full_rows = []
    words = (*COMMAND_WORDS, "") if empty_commands else COMMAND_WORDS
    for row in rows:
        command = draw(spelled(draw(st.sampled_from(words)))).encode()
        full_rows.append([*row[:position], command, *row[position:]])
    return spec, full_header, full_rows, command_column, position


@st.composite
def change_file_cases(draw: st.DrawFn, replay: bool = False) -> CsvCase:
    """An exported change file: a command column (any case, anywhere) of valid commands; for
    a replay (initial/complete mode) empty commands too."""
    separator = draw(separators())
    spec, header, rows, command_column, _ = draw(_change_table(empty_commands=replay))
    encoded = draw(encoded_csv(header, rows, separator))
    return CsvCase(
        spec, tuple(header), tuple(map(tuple, rows)), encoded.data, separator, command_column
    )


# ------------------------------------------------------------------------------------------
# Malformed cases: one defect each, expected error derived from the construction


@st.composite
def _base(draw: st.DrawFn, min_rows: int = 0) -> tuple[Spec, list[bytes], list[list[bytes]], str]:
    """(spec, header as bytes, data rows, separator) of a well-formed full extract."""
    separator = draw(separators())
    spec, header = draw(table_specs())
    pool = draw(key_pools())
    rows = draw(st.lists(row_strategy(spec, header, pool), min_size=min_rows, max_size=5))
    return spec, [name.encode() for name in header], [list(row) for row in rows], separator


def _case(
    defect: str,
    spec: Spec,
    data: bytes,
    separator: str,
    line: int,
    problem: str,
    offset: int | None,
    mode: str = "complete",
    command_column: str = "command",
) -> MalformedCase:
    return MalformedCase(defect, spec, data, separator, mode, command_column, line, problem, offset)


@st.composite
def _field_count(draw: st.DrawFn) -> MalformedCase:
    spec, header, rows, separator = draw(_base(min_rows=1))
    index = draw(st.integers(0, len(rows) - 1))
    row = rows[index]
    if len(row) > 1 and draw(st.booleans()):
        rows[index] = row[: draw(st.integers(1, len(row) - 1))]
    else:
        rows[index] = row + draw(st.lists(values(), min_size=1, max_size=2))
    sep = separator.encode()
    encoded = draw(assembled([draw(encoded_body(row, sep)) for row in [header, *rows]]))
    problem = f"expected {len(header)} fields, found {len(rows[index])}"
    return _case(
        "field_count",
        spec,
        encoded.data,
        separator,
        encoded.lines[index + 1],
        problem,
        encoded.offsets[index + 1],
    )


@st.composite
def _invalid_utf8(draw: st.DrawFn) -> MalformedCase:
    """A bad sequence at the start or end of a value (header or row); sometimes the row also
    has a wrong width, which must not win (UTF-8 is checked first)."""
    spec, header, rows, separator = draw(_base())
    table = [header, *rows]
    index = draw(st.integers(0, len(table) - 1))
    column = draw(st.integers(0, len(header) - 1))
    bad = draw(st.sampled_from(BAD_UTF8))
    value = table[index][column]
    table[index][column] = bad + value if draw(st.booleans()) else value + bad
    if index > 0 and draw(st.booleans()):
        table[index].append(b"extra")
    sep = separator.encode()
    encoded = draw(assembled([draw(encoded_body(row, sep)) for row in table]))
    try:
        encoded.data.decode("utf-8")
        raise AssertionError("the injected bytes must not be UTF-8")
    except UnicodeDecodeError as error:
        offset = error.start
    # The message names the likely code page after the bad byte (the tests compare its start).
    return _case(
        "invalid_utf8", spec, encoded.data, separator, encoded.lines[index], "invalid UTF-8", offset
    )


@st.composite
def _unterminated_quote(draw: st.DrawFn) -> MalformedCase:
    """The last row opens a quote that nothing closes (no quote follows it in the file)."""
    spec, header, rows, separator = draw(_base())
    sep = separator.encode()
    table = [header, *rows]
    last = table[-1]
    column = draw(st.integers(0, len(last) - 1))
    before = [draw(encoded_field(value, sep, len(last))) for value in last[:column]]
    prefix = b"".join(field + sep for field in before)
    after = sep.join(value.replace(b'"', b"") for value in last[column:])
    tail = draw(st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]))
    bodies = [draw(encoded_body(row, sep)) for row in table[:-1]] + [prefix + b'"' + after]
    encoded = draw(assembled(bodies, tail=tail))
    return _case(
        "unterminated_quote",
        spec,
        encoded.data,
        separator,
        encoded.lines[-1],
        "unterminated quote",
        encoded.offsets[-1] + len(prefix),
    )


@st.composite
def _text_after_quote(draw: st.DrawFn) -> MalformedCase:
    """``"value"junk`` in some field; sometimes an earlier field of the row is also not UTF-8,
    which must not win (the row is tokenized before it is checked)."""
    spec, header, rows, separator = draw(_base())
    sep = separator.encode()
    table = [header, *rows]
    index = draw(st.integers(0, len(table) - 1))
    row = table[index]
    column = draw(st.integers(0, len(row) - 1))
    if column > 0 and draw(st.booleans()):
        row[0] += b"\xff"
    before = [draw(encoded_field(value, sep, len(row))) for value in row[:column]]
    prefix = b"".join(field + sep for field in before) + quote(row[column])
    after = [draw(encoded_field(value, sep, len(row))) for value in row[column + 1 :]]
    # In the header a CR after the quote is refused as CR-only line ends instead (cr_only).
    junk = [j for j in AFTER_QUOTE_JUNK if index > 0 or not j.startswith(b"\r")]
    body = prefix + draw(st.sampled_from(junk)) + b"".join(sep + f for f in after)
    bodies = [draw(encoded_body(r, sep)) for r in table]
    bodies[index] = body
    encoded = draw(assembled(bodies))
    return _case(
        "text_after_quote",
        spec,
        encoded.data,
        separator,
        encoded.lines[index],
        "text after closing quote",
        encoded.offsets[index] + len(prefix),
    )


@st.composite
def _missing_column(draw: st.DrawFn) -> MalformedCase:
    """A kept (maybe key) column removed from the header and the rows."""
    spec, header, rows, separator = draw(_base())
    if len(header) == 1:  # keep at least one column once the kept one is gone
        header.append(b"filler")
        rows = [[*row, b"f"] for row in rows]
    wanted = {fold(name) for name in spec.columns}
    kept = [i for i, name in enumerate(header) if fold(name.decode()) in wanted]
    gone = draw(st.sampled_from(kept))
    missing = next(name for name in spec.columns if fold(name) == fold(header[gone].decode()))
    table = [[v for i, v in enumerate(row) if i != gone] for row in [header, *rows]]
    sep = separator.encode()
    encoded = draw(assembled([draw(encoded_body(row, sep)) for row in table]))
    problem = f"column '{missing}' is missing from the header"
    return _case("missing_column", spec, encoded.data, separator, 1, problem, encoded.offsets[0])


@st.composite
def _duplicated_header(draw: st.DrawFn) -> MalformedCase:
    """A kept column's name repeated (in another case) somewhere; the later spelling is named,
    at its offset. (Unkept names may repeat: table_specs draws such headers as valid.)"""
    spec, header, rows, separator = draw(_base())
    wanted = {fold(name) for name in spec.columns}
    original = draw(
        st.sampled_from([i for i, n in enumerate(header) if fold(n.decode()) in wanted])
    )
    copy = draw(spelled(ascii_lower(header[original].decode()))).encode()
    position = draw(st.integers(0, len(header)))
    later = original + 1 if position <= original else position
    header.insert(position, copy)
    for row in rows:
        row.insert(position, draw(values()))
    sep = separator.encode()
    fields = [draw(encoded_field(name, sep, len(header))) for name in header]
    start = sum(len(field) + 1 for field in fields[:later])
    bodies = [sep.join(fields)] + [draw(encoded_body(row, sep)) for row in rows]
    encoded = draw(assembled(bodies))
    problem = f"duplicated header name '{header[later].decode()}'"
    offset = encoded.offsets[0] + start
    return _case("duplicated_header", spec, encoded.data, separator, 1, problem, offset)


@st.composite
def _empty_file(draw: st.DrawFn) -> MalformedCase:
    spec, _ = draw(table_specs())
    # Not 0 bytes: that is a table with no rows (PowerShell's export of nothing).
    data = draw(st.sampled_from([BOM, b"\n", b"\r\n\n", BOM + b"\r\n"]))
    return _case("empty_file", spec, data, ",", 1, "empty file (no header)", 0)


@st.composite
def _invalid_command(draw: st.DrawFn) -> MalformedCase:
    """A command no spelling means, in any mode; or an empty one in an incremental file."""
    separator = draw(separators())
    spec, header, rows, command_column, position = draw(_change_table(min_rows=1))
    index = draw(st.integers(0, len(rows) - 1))
    mode = draw(st.sampled_from(["incremental", "Incremental", "complete", "initial"]))
    bad = b"" if mode.lower() == "incremental" and draw(st.booleans()) else None
    if bad is None:
        bad = draw(st.sampled_from(BAD_COMMANDS))
    rows[index][position] = bad
    encoded = draw(encoded_csv(header, rows, separator))
    expected = "insert, update, delete, merge or add"
    shown = bad.decode().replace("\r", " ").replace("\n", " ")
    problem = f"invalid command '{shown}' (expected {expected})"
    if bad == b"":
        problem = f"empty command (expected {expected})"
    line, offset = encoded.lines[index + 1], encoded.offsets[index + 1]
    return _case(
        "invalid_command",
        spec,
        encoded.data,
        separator,
        line,
        problem,
        offset,
        mode=mode,
        command_column=command_column,
    )


@st.composite
def _foreign_encoding(draw: st.DrawFn) -> MalformedCase:
    """A whole file in UTF-16/32 without its byte-order mark (bcp -w, a BOM-less export) read
    as UTF-8: refused at once, naming the encoding its NUL bytes betray and the option."""
    spec, header, rows, separator = draw(_base())
    codec = draw(st.sampled_from(FOREIGN_MARKS))[3]
    text = b"\r\n".join(separator.encode().join(r) for r in [header, *rows]).decode("utf-8")
    data = text.encode(codec)
    shapes = (
        ((False, True, True, True), "UTF-32 LE"),
        ((True, True, True, False), "UTF-32 BE"),
        ((False, True, False, True), "UTF-16 LE"),
        ((True, False, True, False), "UTF-16 BE"),
    )
    zeros = tuple(byte == 0 for byte in data[:4])
    betrayed = next((shown for shape, shown in shapes if shape == zeros), None)
    assume(len(data) >= 4 and betrayed is not None)
    assert betrayed is not None
    option = betrayed.lower().replace(" ", "")
    problem = (
        f"not UTF-8: the file looks like {betrayed} without a byte-order mark (NUL bytes "
        f"between its characters); read it with --encoding {option}"
    )
    return _case("foreign_encoding", spec, data, separator, 1, problem, 0)


@st.composite
def _type_line(draw: st.DrawFn) -> MalformedCase:
    """Windows PowerShell's Export-Csv without -NoTypeInformation: a '#TYPE' line first."""
    spec, header, rows, separator = draw(_base())
    sep = separator.encode()
    type_line = draw(
        st.sampled_from(
            [
                b"#TYPE System.Management.Automation.PSCustomObject",
                b"#TYPE Selected.Microsoft.ActiveDirectory.Management.ADUser",
            ]
        )
    )
    bodies = [type_line] + [draw(encoded_body(row, sep)) for row in [header, *rows]]
    encoded = draw(assembled(bodies))
    problem = (
        "the first line is PowerShell type information ('#TYPE ...'), not a header: "
        "export with Export-Csv -NoTypeInformation (Windows PowerShell 5.1; PowerShell 7 "
        "writes the line only when given -IncludeTypeInformation), or skip it with "
        "--skip-lines 1"
    )
    return _case("type_line", spec, encoded.data, separator, 1, problem, encoded.offsets[0])


@st.composite
def _cr_only_line_ends(draw: st.DrawFn) -> MalformedCase:
    """Every line ended by a lone CR (classic Mac OS, Excel's "CSV (Macintosh)"): the header
    line reaches its first CR, which is refused there, whatever follows."""
    spec, header, rows, separator = draw(_base(min_rows=1))
    sep = separator.encode()
    # Header names hold no CR or LF; a quoted one is fine, the CR after it is what counts.
    body = draw(encoded_body(header, sep))
    data = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + body
    cr_at = len(data)
    data += b"\r" + b"\r".join(draw(encoded_body(row, sep)) for row in rows)
    data += draw(st.sampled_from([b"", b"\r"]))
    problem = (
        "bare CR in the header line: the file has CR-only line ends (classic Mac OS, Excel's "
        '"CSV (Macintosh)"); save it with LF or CRLF line ends'
    )
    if b"\n" in data[:cr_at]:
        raise AssertionError("header names hold no line feed")
    return _case("cr_only", spec, data, separator, 1, problem, cr_at)


DEFECTS = {
    "field_count": _field_count,
    "invalid_utf8": _invalid_utf8,
    "unterminated_quote": _unterminated_quote,
    "text_after_quote": _text_after_quote,
    "missing_column": _missing_column,
    "duplicated_header": _duplicated_header,
    "empty_file": _empty_file,
    "invalid_command": _invalid_command,
    "foreign_encoding": _foreign_encoding,
    "type_line": _type_line,
    "cr_only": _cr_only_line_ends,
}


def malformed_cases(defects: Sequence[str] | None = None) -> st.SearchStrategy[MalformedCase]:
    """An input with exactly one defect among ``defects`` (keys of DEFECTS; default all)."""
    return st.one_of([DEFECTS[name]() for name in (defects or DEFECTS)])


# ------------------------------------------------------------------------------------------
# Configuration files for end-to-end tests


def spec_xml(specs: Sequence[Spec], connector: str = "T") -> str:
    """An Identity Manager configuration describing ``specs`` for ``connector``.

    An entity table becomes one EntityTypeMapping (its key ``IsPrimaryKey``); an association
    table becomes a chain of EntityAssociationMappings over its kept columns (one column: a
    mapping whose Column1 and Column2 are that column).
    """
    parts = ['<?xml version="1.0" encoding="utf-8"?>', "<ConfigurationFile>"]
    for number, spec in enumerate(specs):
        table = quoteattr(spec.name)
        if spec.key is not None:
            parts.append(
                f'  <EntityTypeMapping Identifier="E{number}" Connector={quoteattr(connector)}'
                f" ConnectionTable={table}>"
            )
            for i, column in enumerate(spec.columns):
                primary = ' IsPrimaryKey="true"' if fold(column) == fold(spec.key[0]) else ""
                parts.append(
                    f'    <Property Identifier="P{i}" ConnectionColumn={quoteattr(column)}'
                    f"{primary} />"
                )
            parts.append("  </EntityTypeMapping>")
        else:
            pairs = list(zip(spec.columns, spec.columns[1:], strict=False)) or [
                (spec.columns[0], spec.columns[0])
            ]
            for i, (first, second) in enumerate(pairs):
                parts.append(
                    f'  <EntityAssociationMapping Identifier="A{number}_{i}"'
                    f" Connector={quoteattr(connector)} ConnectionTable={table}"
                    f" Column1={quoteattr(first)} Column2={quoteattr(second)} />"
                )
    parts.append("</ConfigurationFile>")
    return "\n".join(parts) + "\n"


def write_spec(path: str | Path, specs: Sequence[Spec], connector: str = "T") -> Path:
    """Write :func:`spec_xml` to ``path`` (a ``.xml`` file) and return the path."""
    target = Path(path)
    target.write_text(spec_xml(specs, connector), encoding="utf-8")
    return target
