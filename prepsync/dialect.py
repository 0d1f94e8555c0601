"""How a table's source file is read: encoding, separator, lines before the header, values to
trim (Identity Manager's CSV connector settings ``Encoding``, ``Separator``,
``NumberOfLinesToSkip`` and ``ValuesToTrim``), and where a byte of the text the engine reads
sits in the file as it is on disk.

The native reader transcodes; this module only names encodings, builds the 256-entry table of a
single-byte code page from Python's codec, and, when a read fails, maps the engine's position
(an offset in the UTF-8 text it made) back to the file's own bytes.
"""

from __future__ import annotations

import codecs
import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prepsync.errors import UsageError
from prepsync.protocol import DEFAULT_SEPARATOR, separator_problem

# The native reader's kinds (csrc/ps_decode.h, enum ps_encoding).
UTF8, UTF16LE, UTF16BE, UTF32LE, UTF32BE, TABLE = range(6)
#: Python's codec of each kind (TABLE: the table's own codec).
KIND_CODECS = {
    UTF8: "utf-8",
    UTF16LE: "utf-16-le",
    UTF16BE: "utf-16-be",
    UTF32LE: "utf-32-le",
    UTF32BE: "utf-32-be",
}
_UNICODE = {
    "utf-8": UTF8,
    "utf-8-sig": UTF8,
    "utf-16": UTF16LE,  # without a byte-order mark, .NET's "UTF-16" ("Unicode") is LE
    "utf-16-le": UTF16LE,
    "utf-16-be": UTF16BE,
    "utf-32": UTF32LE,
    "utf-32-le": UTF32LE,
    "utf-32-be": UTF32BE,
}
# .NET and PowerShell names Python does not know.
_ALIASES = {
    "unicode": "utf-16-le",
    "unicodefffe": "utf-16-be",
    "bigendianunicode": "utf-16-be",
    "bigendianutf32": "utf-32-be",
    "utf8bom": "utf-8",
    "utf8nobom": "utf-8",
}
# Names that depend on the Windows machine that wrote the file.
_MACHINE_DEPENDENT = {
    "default": "the machine's ANSI code page, e.g. windows-1252 in Western Europe and the US",
    "ansi": "the machine's ANSI code page, e.g. windows-1252 in Western Europe and the US",
    "oem": "the machine's OEM code page, e.g. cp437 (US) or cp850 (Western Europe)",
}
MAX_TRIM = 32  # csrc/ps_tokenizer.h PS_MAX_TRIM


@dataclass(frozen=True)
class Encoding:
    """An encoding the native reader knows: its kind, and for a code page its table."""

    name: str  # as the user wrote it, for messages
    kind: int
    codec: str  # Python's codec for the same bytes
    table: bytes | None = None  # TABLE: 256 x {length (0 = no character), UTF-8 bytes}


def resolve_encoding(name: str | None) -> Encoding:
    """``name`` as the native reader takes it; a UsageError names what is wrong."""
    if name is None:
        return Encoding("UTF-8", UTF8, "utf-8")
    folded = name.strip().lower().replace("_", "-")
    if folded.replace("-", "") in _MACHINE_DEPENDENT:
        raise UsageError(
            f"encoding '{name}' is {_MACHINE_DEPENDENT[folded.replace('-', '')]}: "
            "name that code page instead"
        )
    folded = _ALIASES.get(folded.replace("-", ""), folded)
    try:
        codec = codecs.lookup(folded).name
    except LookupError:
        raise UsageError(f"unknown encoding '{name}'") from None
    if codec in _UNICODE:
        kind = _UNICODE[codec]
        return Encoding(name, kind, KIND_CODECS[kind])
    table = _code_page_table(codec)
    if table is None:
        raise UsageError(
            f"encoding '{name}' is not read by prepsync: it takes UTF-8, UTF-16, UTF-32 and "
            "single-byte code pages (windows-1252, latin-1, cp437, ...)"
        )
    return Encoding(name, TABLE, codec, table)


def _code_page_table(codec: str) -> bytes | None:
    """The 256-entry table of a single-byte codec (a charmap codec, or ASCII), else None."""
    if codec != "ascii":
        try:
            module = importlib.import_module(f"encodings.{codec.replace('-', '_')}")
        except ImportError:
            return None
        if len(getattr(module, "decoding_table", "")) != 256:
            return None
    entries = bytearray()
    for byte in range(256):
        try:
            text = bytes([byte]).decode(codec)
        except UnicodeDecodeError:
            entries += b"\0\0\0\0"
            continue
        utf8 = text.encode("utf-8")
        if len(text) != 1 or len(utf8) > 3:
            return None
        entries += bytes([len(utf8)]) + utf8.ljust(3, b"\0")
    return bytes(entries)


def check_separator(separator: str, what: str = "the separator") -> str:
    """``separator`` checked by the agent's and the server's one rule
    (:func:`prepsync.protocol.separator_problem`); "tab" and "\\t" mean a tab."""
    separator = {"\\t": "\t", "tab": "\t"}.get(separator.lower(), separator)
    if problem := separator_problem(separator):
        raise UsageError(f"{what} {problem}")
    return separator


def trim_entries(values: Iterable[str], what: str = "--trim") -> tuple[str, ...]:
    """ValuesToTrim as single characters, in order (an entry of several characters stands for
    each of them in turn)."""
    chars = tuple(char for value in values for char in value)
    if len(chars) > MAX_TRIM:
        raise UsageError(f"{what}: at most {MAX_TRIM} characters to trim")
    return chars


def trimmed(value: str, chars: Sequence[str]) -> str:
    """ValuesToTrim on one value: each character in turn, all its repeats at both ends (what
    the native reader does to every value; header names are trimmed here)."""
    for char in chars:
        while value.startswith(char):
            value = value[len(char) :]
        while value.endswith(char):
            value = value[: -len(char)]
    return value


def encode_trim(chars: Sequence[str]) -> bytes:
    """The native reader's form: each character as a length byte and its UTF-8 bytes."""
    out = bytearray()
    for char in chars:
        utf8 = char.encode("utf-8", "surrogatepass")
        out += bytes([len(utf8)]) + utf8
    return bytes(out)


@dataclass(frozen=True)
class ReadSettings:
    """How one table's source file is read. ``separator`` is the file's; outputs use the run's."""

    separator: str = DEFAULT_SEPARATOR
    encoding: str | None = None  # None: UTF-8 (a byte-order mark decides in any case)
    skip_lines: int = 0
    trim: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "separator", check_separator(self.separator))
        if self.skip_lines < 0:
            raise UsageError("the number of lines to skip cannot be negative")
        object.__setattr__(self, "trim", trim_entries(self.trim))
        resolve_encoding(self.encoding)  # an unknown name is refused before any work

    @property
    def resolved(self) -> Encoding:
        return resolve_encoding(self.encoding)


# ------------------------------------------------------------------------------------------
# Positions in a transcoded file (only when a read fails: these read the file again)

_BLOCK = 1 << 20


def _unit_bytes(text: str, kind: int, codec: str) -> int:
    """Bytes ``text`` takes in the file (a code page: one a character)."""
    return len(text) if kind == TABLE else len(text.encode(codec, "surrogatepass"))


def source_offsets(
    path: str | Path, kind: int, codec: str, bom_len: int, text_offsets: Sequence[int]
) -> list[int]:
    """The file offset of each UTF-8 text offset (each the first byte of a character in the
    text the native reader made of the file): the first byte of the same character on disk."""
    wanted = sorted(set(text_offsets))
    found: dict[int, int] = {}
    # Past the offsets wanted the file may be bad (that may be why it is read again): "replace"
    # keeps one character per bad unit, which is all the counting needs.
    decoder = codecs.getincrementaldecoder(codec)("replace")
    text_at, file_at = 0, bom_len
    with open(path, "rb") as source:
        source.seek(bom_len)
        index = 0
        while index < len(wanted):
            block = source.read(_BLOCK)
            chunk = decoder.decode(block, final=not block)
            size = len(chunk.encode("utf-8", "surrogatepass"))
            while index < len(wanted) and wanted[index] < text_at + size:
                # Inside this chunk: walk it a character at a time up to the offset.
                position, offset = text_at, file_at
                for char in chunk:
                    if position >= wanted[index]:
                        break
                    position += len(char.encode("utf-8", "surrogatepass"))
                    offset += _unit_bytes(char, kind, codec)
                found[wanted[index]] = offset
                index += 1
            text_at += size
            file_at += _unit_bytes(chunk, kind, codec)
            if not block:
                break
    for offset in wanted:
        found.setdefault(offset, file_at)
    return [found[offset] for offset in text_offsets]


def line_at(path: str | Path, codec: str, bom_len: int, file_offset: int) -> int:
    """The 1-based line of the byte at ``file_offset``: LF characters before it, plus one."""
    decoder = codecs.getincrementaldecoder(codec)("replace")
    lines = 1
    with open(path, "rb") as source:
        source.seek(bom_len)
        left = max(0, file_offset - bom_len)
        while left > 0:
            block = source.read(min(_BLOCK, left))
            if not block:
                break
            left -= len(block)
            lines += decoder.decode(block, final=False).count("\n")
    return lines


# ------------------------------------------------------------------------------------------
# Per-table settings: a JSON file shaped like Identity Manager's appsettings.agent.json

#: The keys read from each table's entry (others, such as Path, are the connector's own).
SETTING_KEYS = ("Encoding", "Separator", "NumberOfLinesToSkip", "ValuesToTrim")


def load_table_settings(path: Path, defaults: ReadSettings) -> dict[str, ReadSettings]:
    """Each table's settings from ``path``: ``{"Connections": {"<table>": {"Encoding": ...,
    "Separator": ..., "NumberOfLinesToSkip": ..., "ValuesToTrim": [...]}}}`` (an
    appsettings.agent.json works as it is). A setting a table leaves out is the default (the
    command line's). Keys are table names, matched case-insensitively, ``.csv`` optional;
    tables the configuration does not name are ignored (the file may serve other connectors).
    A UsageError names the file, the table and the setting that is wrong."""
    import json

    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as error:
        raise UsageError(f"{path}: cannot read: {error.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: not JSON ({error})") from None
    connections = document.get("Connections") if isinstance(document, dict) else None
    if not isinstance(connections, dict):
        raise UsageError(f'{path}: no "Connections" object (a table\'s settings go there)')
    settings: dict[str, ReadSettings] = {}
    for table, entry in connections.items():
        where = f"{path}: Connections.{table}"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: expected an object")
        key = table.casefold().removesuffix(".csv")
        if key in settings:
            raise UsageError(f"{where}: the table is named twice")
        settings[key] = _table_entry(entry, defaults, where)
    return settings


def _table_entry(entry: dict[str, object], defaults: ReadSettings, where: str) -> ReadSettings:
    # The keys as .NET's configuration binder reads them: case-insensitively.
    values = {name.casefold(): value for name, value in entry.items()}
    encoding = values.get("encoding", defaults.encoding)
    separator = values.get("separator", defaults.separator)
    skip = values.get("numberoflinestoskip", defaults.skip_lines)
    trim = values.get("valuestotrim", defaults.trim)
    if isinstance(skip, str) and skip.strip().isdigit():
        skip = int(skip)  # configuration values are strings in environment variables
    if encoding is not None and not isinstance(encoding, str):
        raise UsageError(f"{where}.Encoding: expected a string")
    if not isinstance(separator, str):
        raise UsageError(f"{where}.Separator: expected a string")
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 0:
        raise UsageError(f"{where}.NumberOfLinesToSkip: expected a whole number, 0 or more")
    if not isinstance(trim, list | tuple) or not all(isinstance(v, str) for v in trim):
        raise UsageError(f"{where}.ValuesToTrim: expected a list of strings")
    separator = check_separator(separator, f"{where}.Separator")
    chars = trim_entries(trim, f"{where}.ValuesToTrim")
    try:
        return ReadSettings(separator=separator, encoding=encoding, skip_lines=skip, trim=chars)
    except UsageError as error:
        raise UsageError(f"{where}.Encoding: {error}") from None
