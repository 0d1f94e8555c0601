"""Files as real tools write them: encodings, lines before the header, `sep=` hints, values to
trim, per-table settings, 0-byte files, and errors that say what was wrong.

Every sample is generated here byte for byte the way its tool writes it (byte-order mark, CRLF,
every field quoted, `sep=` first line...), and the engine's outputs or error (line, byte,
problem) are compared with the plain-Python reference (tests/reference.py), at tiny budgets and
with reads cut at every byte, so that a UTF-16 code unit or a surrogate pair straddles blocks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import Reading, reference_prepare
from sites import Site
from strategies import Spec, csv_cases

from prepsync import _cleanse
from prepsync.dialect import ReadSettings, load_table_settings, resolve_encoding
from prepsync.errors import InputError, UsageError
from prepsync.pipeline import SUFFIXES, prepare_table
from prepsync.request import TableJob
from prepsync.sizes import parse_size

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPEC = Spec("T", ("id", "name"), ("id",))
BOMS = {
    "utf-16-le": b"\xff\xfe",
    "utf-16-be": b"\xfe\xff",
    "utf-32-le": b"\xff\xfe\x00\x00",
    "utf-32-be": b"\x00\x00\xfe\xff",
}


def native(
    data: bytes, spec: Any = SPEC, *, budget: int = 1 << 20, block: int | None = None, **kw: Any
) -> Any:
    """prepare_table's files (or error) for ``data`` read with ReadSettings(**kw)."""
    separator = kw.pop("out_separator", ",")
    baseline = kw.pop("baseline", None)
    mode = kw.pop("mode", "complete")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        source, out = root / "in.csv", root / "out"
        source.write_bytes(data)
        out.mkdir()
        base = None
        if baseline is not None:
            base = root / "previous.csv"
            base.write_bytes(baseline)
        try:
            result = prepare_table(
                TableJob(
                    source=source,
                    spec=spec,
                    mode=mode,
                    baseline=base,
                    separator=separator,
                    memory_budget=budget,
                    read_block=block,
                    settings=ReadSettings(**{"separator": separator, **kw}),
                ),
                out,
            )
        except InputError as error:
            return ("InputError", error.line, error.offset, error.problem)
        finally:
            assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}
        files = {
            kind: (out / f"{spec.name}{suffix}").read_bytes()
            for kind, suffix in SUFFIXES.items()
            if (out / f"{spec.name}{suffix}").exists()
        }
        return {"files": files, "kept": result.kept, "rows": result.rows_read}


def oracle(data: bytes, spec: Any = SPEC, **kw: Any) -> Any:
    separator = kw.pop("out_separator", ",")
    baseline = kw.pop("baseline", None)
    mode = kw.pop("mode", "complete")
    encoding = kw.pop("encoding", None)
    reading = Reading(
        encoding=encoding,
        skip_lines=kw.pop("skip_lines", 0),
        trim=tuple(kw.pop("trim", ())),
        separator=kw.pop("separator", None),
    )
    assert not kw
    try:
        result = reference_prepare(
            data, spec, mode=mode, baseline=baseline, separator=separator, reading=reading
        )
    except InputError as error:
        return ("InputError", error.line, error.offset, error.problem)
    return {"files": result.files, "kept": result.kept, "rows": result.rows_read}


def same(data: bytes, spec: Any = SPEC, blocks: Any = (None, 1, 2, 3, 5, 7), **kw: Any) -> Any:
    """The engine equals the reference for every read size; returns the outcome."""
    want = oracle(data, spec, **dict(kw))
    for block in blocks:
        assert native(data, spec, block=block, **dict(kw)) == want, block
    return want


def powershell(rows: list[list[str]], separator: str = ",") -> str:
    """Export-Csv -NoTypeInformation: every field quoted, CRLF after every line."""
    return "".join(
        separator.join('"' + value.replace('"', '""') + '"' for value in row) + "\r\n"
        for row in rows
    )


ROWS = [["id", "name"], ["2", "Zoë Ünal"], ["1", '😀 "smile"'], ["3", "Ærø, København"]]
SORTED = 'id,name\n1,"😀 ""smile"""\n2,Zoë Ünal\n3,"Ærø, København"\n'.encode()


# ------------------------------------------------------------------------------------------
# Tool-shaped samples


@pytest.mark.parametrize(
    ("data", "options"),
    [
        # Windows PowerShell 5.1 Export-Csv -Encoding Unicode; csvde -u; Excel "Unicode Text"
        # (tab-separated, read below); LibreOffice "Unicode": UTF-16 LE with its mark.
        pytest.param(b"\xff\xfe" + powershell(ROWS).encode("utf-16-le"), {}, id="ps51-unicode"),
        pytest.param(
            b"\xfe\xff" + powershell(ROWS).encode("utf-16-be"), {}, id="ps51-bigendianunicode"
        ),
        pytest.param(b"\xff\xfe\x00\x00" + powershell(ROWS).encode("utf-32-le"), {}, id="utf32"),
        pytest.param(b"\x00\x00\xfe\xff" + powershell(ROWS).encode("utf-32-be"), {}, id="utf32be"),
        pytest.param(
            b"\xff\xfe" + "".join("\t".join(r) + "\r\n" for r in ROWS).encode("utf-16-le"),
            {"separator": "\t"},
            id="excel-unicode-text",
        ),
        # bcp -w: UTF-16 LE, no mark, no header quoting
        pytest.param(
            "".join(",".join(r) + "\r\n" for r in ROWS[:3]).encode("utf-16-le"),
            {"encoding": "utf-16le"},
            id="bcp-w",
        ),
        # PowerShell 7 Export-Csv (utf8NoBOM): UTF-8, every field quoted, CRLF
        pytest.param(powershell(ROWS).encode(), {}, id="ps7"),
        # psql \copy (...) TO ... WITH (FORMAT csv, HEADER): LF, quoted only as needed
        pytest.param(
            'id,name\n2,Zoë Ünal\n1,"😀 ""smile"""\n3,"Ærø, København"\n'.encode(), {}, id="psql"
        ),
        # csvde -u: UTF-16 LE with its mark, a DN full of commas quoted, CRLF, extra columns
        pytest.param(
            b"\xff\xfe"
            + (
                'DN,objectClass,id,name\r\n"CN=Zoë,OU=HR,DC=x",user,2,Zoë\r\n'
                '"CN=Ann,OU=IT,DC=x",user,1,Ann\r\n'
            ).encode("utf-16-le"),
            {},
            id="csvde-u",
        ),
        pytest.param(b"\xef\xbb\xbf" + powershell(ROWS).encode(), {}, id="ps51-utf8"),
        # Excel "CSV (Comma delimited)" / LibreOffice "ANSI" / -Encoding Default: Windows-1252
        pytest.param(
            "id,name\r\n2,Zoë Ünal\r\n1,“quoted” \u2013 €5\r\n".encode("cp1252"),
            {"encoding": "windows-1252"},
            id="excel-ansi",
        ),
        # -Encoding OEM on a US machine: code page 437
        pytest.param(
            "id,name\r\n1,Ñandú ░\r\n".encode("cp437"), {"encoding": "cp437"}, id="oem-437"
        ),
        # Excel with its separator hint (a European locale): `sep=;` then `;`-separated
        pytest.param(
            b"sep=;\r\n" + "id;name\r\n2;Zoë\r\n1;a,b\r\n".encode(), {}, id="excel-sep-hint"
        ),
    ],
)
def test_tool_exports_match_the_reference(data: bytes, options: dict[str, Any]) -> None:
    outcome = same(data, **options)
    assert isinstance(outcome, dict), outcome
    assert outcome["files"]["sorted"].startswith(b"id,name\n")


def test_utf16_export_gives_the_utf8_files_bytes() -> None:
    """The same table in UTF-16 (either order) and UTF-32 makes the very bytes UTF-8 makes."""
    want = native(powershell(ROWS).encode())
    assert want["files"]["sorted"] == SORTED
    for codec, mark in BOMS.items():
        assert native(mark + powershell(ROWS).encode(codec)) == want, codec


def test_a_byte_order_mark_wins_over_the_encoding_asked_for() -> None:
    data = b"\xff\xfe" + powershell(ROWS).encode("utf-16-le")
    assert native(data, encoding="windows-1252")["files"]["sorted"] == SORTED
    utf8 = b"\xef\xbb\xbf" + powershell(ROWS).encode()
    assert native(utf8, encoding="windows-1252")["files"]["sorted"] == SORTED


def test_powershell_type_line_is_refused_with_both_versions_switches() -> None:
    data = b"\xff\xfe" + (
        "#TYPE System.Management.Automation.PSCustomObject\r\n" + powershell(ROWS)
    ).encode("utf-16-le")
    outcome = same(data)
    assert outcome[:3] == ("InputError", 1, 2)
    assert "-NoTypeInformation" in outcome[3] and "-IncludeTypeInformation" in outcome[3]
    # Skipping it reads the file.
    assert same(data, skip_lines=1)["files"]["sorted"] == SORTED
    # With lines skipped already, the message counts them.
    skipped = same(b"report\n#TYPE x\nid,name\n", skip_lines=1)
    assert skipped[:2] == ("InputError", 2) and skipped[3].startswith("the header line is")
    assert skipped[3].endswith("--skip-lines 2")


# ------------------------------------------------------------------------------------------
# Every buffer boundary


def test_surrogate_pairs_and_code_units_straddle_every_block_boundary() -> None:
    """A value of 4-byte characters (surrogate pairs in UTF-16), 2- and 3-byte ones, at every
    position relative to reads of 1 to 9 bytes and around the decoder's 64 KiB steps."""
    value = "😀é€𝄞x" * 3
    for pad in range(8):
        text = f"id,name\r\n1,{'a' * pad}{value}\r\n2,{value}{'b' * pad}\r\n"
        for codec, mark in BOMS.items():
            same(mark + text.encode(codec), blocks=range(1, 10))
    long = "id,name\r\n" + "".join(f"{i},{'a' * (i % 7)}😀{'€' * (i % 5)}\r\n" for i in range(6000))
    same(b"\xff\xfe" + long.encode("utf-16-le"), blocks=(None, 1000, 4093, 65535, 65537))


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_an_unpaired_surrogate_is_named_at_its_byte_whatever_the_block(codec: str) -> None:
    order = "little" if codec.endswith("le") else "big"
    for unit in (0xD83D, 0xDE00):  # a high one with no low after it, a lone low one
        bad = unit.to_bytes(2, order)
        for at in range(6):
            body = ("id,name\r\n1," + "x" * at).encode(codec) + bad + "y\r\n".encode(codec)
            outcome = same(BOMS[codec] + body, blocks=range(1, 8))
            assert outcome == (
                "InputError",
                2,
                2 + len(("id,name\r\n1," + "x" * at).encode(codec)),
                f"invalid UTF-16 {codec[-2:].upper()}: unpaired surrogate 0x{unit:04X}",
            )


def test_a_file_cut_inside_a_character() -> None:
    for codec, mark in BOMS.items():
        body = "id,name\r\n1,a\r\n".encode(codec)
        for extra in range(1, 4 if codec.startswith("utf-32") else 2):
            outcome = same(mark + body + b"\x41" * extra, blocks=range(1, 6))
            assert outcome[:3] == ("InputError", 3, len(mark) + len(body)), codec
    # A high surrogate as the last unit, with nothing after it.
    outcome = same(b"\xff\xfe" + "id,name\n1,a".encode("utf-16-le") + b"\x3d\xd8")
    assert outcome[3] == "invalid UTF-16 LE: unpaired surrogate 0xD83D"


def test_an_earlier_problem_wins_over_a_later_bad_character() -> None:
    """The file's first problem is the one named, however the file is cut into reads."""
    good = "id,name\r\n1,a,b\r\n".encode("utf-16-le")  # a row with too many fields, then...
    data = b"\xff\xfe" + good + b"\x00\xdc" + "\r\n".encode("utf-16-le")  # ...a lone surrogate
    assert same(data, blocks=range(1, 12))[3] == "expected 2 fields, found 3"


def test_a_code_page_byte_with_no_character() -> None:
    data = "id,name\r\n1,é\r\n".encode("cp1252") + b"2,\x81\r\n"
    outcome = same(data, encoding="windows-1252", blocks=range(1, 5))
    assert outcome == ("InputError", 3, 16, "byte 0x81 is no character in windows-1252")


# ------------------------------------------------------------------------------------------
# Generated tables in every encoding, with the other settings


@st.composite
def encoded_cases(draw: st.DrawFn) -> tuple[Any, bytes, dict[str, Any]]:
    """A generated table written in some encoding (with its byte-order mark, or without and
    named), sometimes with lines before the header and values to trim."""
    case = draw(csv_cases(max_rows=12))
    text = case.data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    form = draw(st.sampled_from(["bom", "bom", "asked", "cp1252", "latin-1", "utf-8"]))
    # The outputs' separator may differ from the file's: values are quoted for the outputs'.
    outputs = draw(st.sampled_from([case.separator, ",", ";", "\t"]))
    hinted = draw(st.integers(0, 3)) == 0  # an Excel `sep=X` line names the file's separator
    told = draw(st.sampled_from([",", ";", "|"])) if hinted else case.separator
    options: dict[str, Any] = {"out_separator": outputs, "separator": told}
    mark = b""
    codec = form
    if form == "bom":
        codec = draw(st.sampled_from(sorted(BOMS)))
        mark = BOMS[codec]
    elif form == "asked":
        codec = draw(st.sampled_from(["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"]))
    elif form == "utf-8" and case.data.startswith(b"\xef\xbb\xbf"):
        mark = b"\xef\xbb\xbf"
    if form in ("asked", "cp1252", "latin-1"):
        options["encoding"] = codec
    if draw(st.booleans()):
        preamble = draw(st.sampled_from(["Report\r\n", 'a,"b\n', "\r\n", "x;y;z\n\n"]))
        options["skip_lines"] = preamble.count("\n")
        text = preamble + text
    if hinted:
        # The hint is the first line, and one of the lines to skip (or skipped on its own).
        text = f"sep={case.separator}" + draw(st.sampled_from(["\r\n", "\n"])) + text
        skip = options.get("skip_lines", 0)
        options["skip_lines"] = skip + 1 if skip else draw(st.sampled_from([0, 1]))
    try:
        data = mark + text.encode(codec)
    except UnicodeEncodeError:
        assume(False)
        raise
    if draw(st.booleans()):
        trim = draw(st.lists(st.sampled_from([" ", "a", "é", '"']), max_size=3))
        options["trim"] = tuple(trim)
    if form != "utf-8" and draw(st.integers(0, 5)) == 0:
        # A bad character anywhere: the first problem in the file wins, whatever the reads.
        unit = 4 if codec.startswith("utf-32") else 2 if codec.startswith("utf-16") else 1
        bad = {
            "utf-16-le": [b"\x00\xd8", b"\x00\xdc", b"\x41"],
            "utf-16-be": [b"\xd8\x00", b"\xdc\x00", b"\x41"],
            "utf-32-le": [b"\x00\x00\x11\x00", b"\x00\xd8\x00\x00", b"\x41\x00"],
            "utf-32-be": [b"\x00\x11\x00\x00", b"\x00\x00\xd8\x00", b"\x00\x41"],
        }.get(codec, [b"\x81" if form == "cp1252" else b"\x80"])
        units = (len(data) - len(mark)) // unit
        at = len(mark) + unit * draw(st.integers(0, units))
        data = data[:at] + draw(st.sampled_from(bad)) + data[at:]
        if form == "latin-1":
            options["encoding"] = "ascii"  # latin-1 has no undefined byte; ASCII has 128
    return case, data, options


@SETTINGS
@given(
    item=encoded_cases(),
    budget=st.sampled_from([256, 4096, 1 << 20]),
    block=st.one_of(st.integers(1, 64), st.just(None)),
)
def test_generated_tables_match_the_reference_in_every_encoding(
    item: tuple[Any, bytes, dict[str, Any]], budget: int, block: int | None
) -> None:
    case, data, options = item
    want = oracle(data, case.spec, **dict(options))
    assert native(data, case.spec, budget=budget, block=block, **dict(options)) == want


# ------------------------------------------------------------------------------------------
# Separators, sep= hints, trimming


def test_sep_hint_and_skip_lines_count_it_as_a_line() -> None:
    body = b"sep=;\r\nid;name\r\n1;a\r\n"
    assert same(body)["files"]["sorted"] == b"id,name\n1,a\n"
    # NumberOfLinesToSkip 1 for the same file (the connector's way): the same table.
    assert same(body, skip_lines=1)["files"]["sorted"] == b"id,name\n1,a\n"
    # With the outputs on `;` too, values holding `,` are no longer quoted, `;` ones are.
    hinted = b"sep=\t\nid\tname\n1\ta;b,c\n"
    assert same(hinted, out_separator=";")["files"]["sorted"] == b'id;name\n1;"a;b,c"\n'
    assert same(b'sep="\nid\n')[3].startswith("the first line 'sep=' names byte 0x22")


def test_skip_lines_longer_than_the_file() -> None:
    outcome = same(b"one\ntwo", skip_lines=3)
    assert outcome == (
        "InputError",
        2,
        7,
        "the file ends before its header: 3 line(s) to skip (--skip-lines)",
    )


def test_trim_follows_values_to_trim_order_after_unquoting() -> None:
    """Identity Manager's example: `$` then `%` makes "$%I am an example$%" into
    "I am an example$". Header names are trimmed too; a value trimmed to nothing is null."""
    data = b'"$id$",name\n1,"$%I am an example$%"\n"$$",x\n2," , "\n'
    outcome = same(data, trim=("$", "%", " "))
    assert outcome["files"]["sorted"] == b'id,name\n1,I am an example$\n2,","\n'
    assert outcome["files"]["nullpk"] == b"id,name\n,x\n"
    quoted = same(b'id,name\n1,"""a"""\n', trim=('"',))
    assert quoted["files"]["sorted"] == b"id,name\n1,a\n"


def test_a_header_on_another_separator_says_so() -> None:
    outcome = same(b"id;name\n1;a\n")
    assert outcome[3] == (
        "column 'id' is missing from the header (the header splits on ';' instead: set "
        "--separator ';', or the table's Separator)"
    )
    tabs = same(b"id\tname\n1\ta\n")
    assert "splits on tabs instead: set --separator tab" in tabs[3]


def test_a_row_on_another_separator_says_so() -> None:
    outcome = same(b"id,name\n1,a\n2;b\n")
    assert outcome == (
        "InputError",
        3,
        12,
        "expected 2 fields, found 1 (split on ';' it has 2: was it written with that "
        "separator? --separator reads it)",
    )


def test_invalid_utf8_names_the_likely_code_page() -> None:
    ansi = same("id,name\n1,“x”\n".encode("cp1252"))
    assert ansi[3] == (
        "invalid UTF-8 (byte 0x93: likely Windows-1252, read it with --encoding windows-1252)"
    )
    latin = same("id,name\n1,café\n".encode("latin-1"))
    assert "likely a single-byte code page such as Windows-1252 or Latin-1" in latin[3]


# ------------------------------------------------------------------------------------------
# 0-byte files


def test_a_zero_byte_file_is_a_table_with_no_rows() -> None:
    assert same(b"")["files"]["sorted"] == b"id,name\n"
    baseline = b"ID,Name\n1,a\n2,b\n"
    outcome = same(b"", mode="incremental", baseline=baseline)
    assert outcome["files"]["delta"] == b"command,ID,Name\ndelete,1,a\ndelete,2,b\n"


def test_a_zero_byte_export_warns_that_the_table_shrank(tmp_path: Path) -> None:
    site = Site(tmp_path)
    assert site.run("complete")[0] == 0
    site.write("Entries.csv", b"")
    code, _, err = site.run("complete")
    assert code == 0, err
    assert site.output("Entries.sorted.csv") == b"id,name\n"
    assert "Entries: 0 rows where the baseline has 2" in err and "shrank" in err


# ------------------------------------------------------------------------------------------
# Command line and per-table settings


def test_cli_reads_each_table_with_its_settings(tmp_path: Path) -> None:
    site = Site(tmp_path)
    entries = "Generated by HR\r\n" + powershell(
        [["id", "name", "x"], ["2", "*Zoë*", ""], ["1", " Ann ", ""]], ";"
    )
    site.write("Entries.csv", entries.encode("cp1252"))
    site.write("Members.csv", b"\xff\xfe" + "group\tmember\r\ng1\tu1\r\n".encode("utf-16-le"))
    settings = tmp_path / "appsettings.agent.json"
    settings.write_text(
        json.dumps(
            {
                "OpenId": {"AgentIdentifier": "Local"},
                "Connections": {
                    "Entries": {
                        "Path": "C:/exports/entries.csv",
                        "Encoding": "Windows-1252",
                        "Separator": ";",
                        "NumberOfLinesToSkip": 1,
                        "ValuesToTrim": ["*", " "],
                    },
                    "members.csv": {"Separator": "\t"},
                    "OtherConnector": {"Encoding": "UTF-16"},
                },
            }
        ),
        encoding="utf-8",
    )
    code, _, err = site.run("complete", "--table-settings", str(settings))
    assert code == 0, err
    assert site.output("Entries.sorted.csv") == "id,name\n1,Ann\n2,Zoë\n".encode()
    assert site.output("Members.sorted.csv") == b"group,member\ng1,u1\n"
    # The log says how each table was read when it was not UTF-8.
    assert "Entries.csv read as Windows-1252" in err and "Members.csv read as UTF-16 LE" in err


def test_cli_options_are_the_defaults(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write("Entries.csv", "# export\nid|name\n1|Zoë \n".encode("latin-1"))
    site.write("Members.csv", "# export\ngroup|member\ng|ü\n".encode("latin-1"))
    code, _, err = site.run(
        "complete",
        "--encoding",
        "latin-1",
        "--skip-lines",
        "1",
        "--trim",
        " ",
        "--separator",
        "|",
    )
    assert code == 0, err
    assert site.output("Entries.sorted.csv") == "id|name\n1|Zoë\n".encode()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("[]", 'no "Connections" object'),
        ('{"Connections": {"Entries": {"Separator": ";;"}}}', "Connections.Entries.Separator"),
        ('{"Connections": {"Entries": {"NumberOfLinesToSkip": -1}}}', "NumberOfLinesToSkip"),
        ('{"Connections": {"Entries": {"ValuesToTrim": "*"}}}', "ValuesToTrim: expected a list"),
        ('{"Connections": {"Entries": {"Encoding": "klingon"}}}', "unknown encoding 'klingon'"),
        ("{", "not JSON"),
    ],
)
def test_bad_table_settings_are_one_line(tmp_path: Path, document: str, message: str) -> None:
    site = Site(tmp_path)
    settings = tmp_path / "s.json"
    settings.write_text(document, encoding="utf-8")
    code, _, err = site.run("complete", "--table-settings", str(settings))
    assert code == 1 and err.count("\n") == 1 and message in err, err


def test_encoding_names() -> None:
    assert resolve_encoding("Unicode").kind == resolve_encoding("utf-16le").kind
    assert resolve_encoding("BigEndianUnicode").codec == "utf-16-be"
    assert resolve_encoding("IBM437").table is not None
    for name, hint in (("Default", "ANSI"), ("OEM", "OEM"), ("shift_jis", "single-byte")):
        with pytest.raises(UsageError, match=hint):
            resolve_encoding(name)
    defaults = ReadSettings(separator="|", skip_lines=2)
    path = Path(tempfile.mkdtemp()) / "s.json"
    path.write_text('{"Connections": {"T": {"ValuesToTrim": ["ab"]}}}', encoding="utf-8")
    loaded = load_table_settings(path, defaults)
    assert loaded == {"t": ReadSettings(separator="|", skip_lines=2, trim=("a", "b"))}


@pytest.mark.parametrize(
    ("text", "size"),
    [("256M", 256 << 20), ("1G", 1 << 30), ("64K", 64 << 10), ("256MB", 256_000_000)],
)
def test_sizes_read_as_gnu_sort_reads_them(text: str, size: int) -> None:
    assert parse_size(text) == size
