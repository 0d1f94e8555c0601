"""The test oracle checked on its own: literal examples of REFERENCE §2-§4 / DESIGN.md, then
properties on generated inputs (tests/strategies.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import COMMANDS, format_row, parse_csv, reference_prepare
from strategies import (
    BOM,
    CsvCase,
    IncrementalCase,
    MalformedCase,
    Spec,
    change_file_cases,
    csv_cases,
    encoded_csv,
    fold,
    incremental_cases,
    malformed_cases,
    separators,
    spec_xml,
    values,
    write_spec,
)

from prepsync.errors import BaselineError, InputError

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENTITY = Spec("T", ("id", "name"), ("Id",))  # key spelled unlike the column: case-insensitive


def rows_of(data: bytes, separator: bytes = b",") -> list[list[bytes]]:
    return [values for _, values in parse_csv(data, separator, "p")]


def input_error(data: bytes, spec: Spec = ENTITY, **options: object) -> InputError:
    with pytest.raises(InputError) as caught:
        reference_prepare(data, spec, **options)  # type: ignore[arg-type]
    return caught.value


def parse_error(data: bytes, separator: bytes = b",") -> InputError:
    with pytest.raises(InputError) as caught:
        parse_csv(data, separator, "p")
    return caught.value


def baseline_error(baseline: bytes | None, **options: object) -> BaselineError:
    data = b"id,name\na,1\n"
    with pytest.raises(BaselineError) as caught:
        reference_prepare(data, ENTITY, mode="incremental", baseline=baseline, **options)  # type: ignore[arg-type]
    return caught.value


# ------------------------------------------------------------------------------------------
# Parsing (REFERENCE §2, DESIGN.md "CSV input")


def test_bom_is_dropped_but_counted_in_offsets() -> None:
    assert parse_csv(BOM + b"a,b\n1,2\n", b",", "p") == [(1, [b"a", b"b"]), (2, [b"1", b"2"])]
    error = parse_error(BOM + b'a\n"x\n')
    assert (error.line, error.offset, error.problem) == (2, 5, "unterminated quote")


def test_lf_crlf_and_missing_final_line_end() -> None:
    assert parse_csv(b"a\r\nb\nc", b",", "p") == [(1, [b"a"]), (2, [b"b"]), (3, [b"c"])]


def test_blank_lines_are_skipped_and_lines_stay_physical() -> None:
    data = b"a\n\n\r\nb\n\r\n\n"
    assert parse_csv(data, b",", "p") == [(1, [b"a"]), (4, [b"b"])]


def test_a_line_holding_only_two_quotes_is_a_row() -> None:
    assert parse_csv(b'a\n""\n', b",", "p") == [(1, [b"a"]), (2, [b""])]


def test_quoted_fields_hold_quotes_separators_and_line_breaks() -> None:
    data = b'a,b\n"x ""y"",\r\nz",2\nq,3\n'
    assert parse_csv(data, b",", "p") == [
        (1, [b"a", b"b"]),
        (2, [b'x "y",\r\nz', b"2"]),
        (4, [b"q", b"3"]),  # the row after a two-line row starts on line 4
    ]


def test_a_quote_inside_an_unquoted_field_is_a_value_byte() -> None:
    assert rows_of(b'a,b\nab"c,d""\n') == [[b"a", b"b"], [b'ab"c', b'd""']]


def test_a_lone_cr_is_a_value_byte() -> None:
    assert rows_of(b"a,b\nx\ry,z\r\n") == [[b"a", b"b"], [b"x\ry", b"z"]]
    assert rows_of(b"a\nb\r") == [[b"a"], [b"b\r"]]  # at the very end too


def test_empty_fields_and_a_trailing_separator() -> None:
    assert rows_of(b'a,b,c\n,"",\n') == [[b"a", b"b", b"c"], [b"", b"", b""]]


def test_values_are_kept_byte_for_byte() -> None:
    assert rows_of(b"a,b\n a ,\x00\xc3\xa9\xf0\x9f\x98\x80\n") == [
        [b"a", b"b"],
        [b" a ", b"\x00\xc3\xa9\xf0\x9f\x98\x80"],
    ]


def test_other_separator() -> None:
    assert rows_of(b'a;b\n"x;y";z,w\n', b";") == [[b"a", b"b"], [b"x;y", b"z,w"]]
    assert rows_of(b"a\tb\n1\t2\n", b"\t") == [[b"a", b"b"], [b"1", b"2"]]


# ------------------------------------------------------------------------------------------
# Parse errors: exact text, line where the row starts, byte offset of the problem


@pytest.mark.parametrize(
    ("data", "line", "offset", "problem"),
    [
        (b'a,b\n"x"y,2\n', 2, 7, "text after closing quote"),
        (b'a,b\n"x" ,2\n', 2, 7, "text after closing quote"),
        (b'a,b\n"x"\r2\n', 2, 7, "text after closing quote"),  # a lone CR is no line end
        # tokenizing comes first: an earlier bad byte in the same row does not win
        (b'a,b\n\xff,"x"y\n', 2, 9, "text after closing quote"),
        (b"a,b\n1,x\xc3\n", 2, 7, "invalid UTF-8"),  # truncated 2-byte sequence
        (b"a,b\n1,\xed\xa0\x80\n", 2, 6, "invalid UTF-8"),  # UTF-16 surrogate
        (b"a,b\n1,\xc0\xaf\n", 2, 6, "invalid UTF-8"),  # overlong
        (b'a,b\n"1\n\xff",2\n', 2, 7, "invalid UTF-8"),  # named at the row's start line
        (b"a,\x80\n1,2\n", 1, 2, "invalid UTF-8"),  # in the header
        (b"a,b\n\xff\n", 2, 4, "invalid UTF-8"),  # before the field count
        (b"a,b\n1,2\n\n1,2,3\n", 4, 9, "expected 2 fields, found 3"),
        (b"a\nx\ry\nz,1\n", 3, 6, "expected 1 fields, found 2"),  # a lone CR is no line
        (b"a,b\n1\n", 2, 4, "expected 2 fields, found 1"),
        (b'a,b\n""\n', 2, 4, "expected 2 fields, found 1"),
        (b'a,b\n1,"x\n2,3\n', 2, 6, "unterminated quote"),
        (b'a,b\n1\n"x', 2, 4, "expected 2 fields, found 1"),  # first bad row wins
        (b"", 1, 0, "empty file (no header)"),
        (BOM, 1, 0, "empty file (no header)"),
        (b"\r\n\n", 1, 0, "empty file (no header)"),
        (b'a,b\n1,"x"\r', 2, 9, "text after closing quote"),  # a CR at the end is no line end
    ],
)
def test_parse_errors(data: bytes, line: int, offset: int, problem: str) -> None:
    error = parse_error(data)
    assert (error.line, error.offset, error.problem) == (line, offset, problem)


@pytest.mark.parametrize(
    ("data", "line", "offset", "problem"),
    [
        ("\ufeffid,name\r\n".encode("utf-16-le"), 1, 0, "UTF-16 LE file (byte-order mark FF FE)"),
        ("\ufeffid\r\n".encode("utf-16-be"), 1, 0, "UTF-16 BE file (byte-order mark FE FF)"),
        ("\ufeffid\n".encode("utf-32-le"), 1, 0, "UTF-32 LE file (byte-order mark FF FE 00 00)"),
        ("\ufeffid\n".encode("utf-32-be"), 1, 0, "UTF-32 BE file (byte-order mark 00 00 FE FF)"),
        (b"#TYPE System.Management.Automation.PSCustomObject\r\n", 1, 0, "the first line is"),
        (BOM + b'\n#TYPE x\n"id"\n', 2, 4, "the first line is PowerShell type information"),
        (b"id,name,dept\rE1,al,IT\r", 1, 12, "bare CR in the header line"),
        (b'"id","name"\r"1","x"\r', 1, 11, "bare CR in the header line"),  # after a quote
        (b"a\r", 1, 1, "bare CR in the header line"),  # at the very end too
    ],
)
def test_refused_exports_name_their_cause(
    data: bytes, line: int, offset: int, problem: str
) -> None:
    error = parse_error(data)
    assert (error.line, error.offset) == (line, offset)
    assert error.problem.startswith(problem)


def test_a_cr_inside_quotes_in_the_header_is_a_value_byte() -> None:
    assert rows_of(b'"a\rb",c\n1,2\n') == [[b"a\rb", b"c"], [b"1", b"2"]]


def test_input_error_message_names_file_line_and_byte() -> None:
    error = input_error(b'id,name\n"x"y,2\n', path="in/T.csv")
    assert str(error) == "in/T.csv, line 2 (byte 11): text after closing quote"


def test_header_errors() -> None:
    error = input_error(b"id,Name,ID\n")
    assert (error.line, error.offset, error.problem) == (1, 8, "duplicated header name 'ID'")
    error = input_error(BOM + b'"id",x,"Id"\n')  # the offset of the later name's quote
    assert (error.line, error.offset, error.problem) == (1, 10, "duplicated header name 'Id'")
    # the command column is read too, so it must be unambiguous
    error = input_error(b"id,command,name,COMMAND\n")
    assert (error.offset, error.problem) == (16, "duplicated header name 'COMMAND'")
    spec = Spec("T", ("id", "Mail"), ("id",))
    error = input_error(BOM + b"id,name\n", spec)
    assert (error.line, error.offset, error.problem) == (
        1,
        3,
        "column 'Mail' is missing from the header",
    )


def test_unread_header_names_may_be_empty_or_repeated() -> None:
    result = reference_prepare(b",id,,name,x,X\na,1,,n,2,3\n", ENTITY)
    assert result.files["sorted"] == b"id,name\n1,n\n"


def test_the_header_is_checked_before_later_rows() -> None:
    assert input_error(b'id,ID\n"x').problem == "duplicated header name 'ID'"
    assert input_error(b'id\n"x').problem == "column 'name' is missing from the header"


# ------------------------------------------------------------------------------------------
# Output quoting (REFERENCE §2)


@pytest.mark.parametrize(
    ("values", "separator", "line"),
    [
        ([b"a", b"", b"b c"], b",", b"a,,b c\n"),
        ([b'x"y', b"a,b", b"c\rd", b"e\nf"], b",", b'"x""y","a,b","c\rd","e\nf"\n'),
        ([b"a,b", b"c;d"], b";", b'a,b;"c;d"\n'),
        ([b" a ", b"\x00\xc3\xa9\xf0\x9f\x98\x80"], b",", b" a ,\x00\xc3\xa9\xf0\x9f\x98\x80\n"),
        ([b'"'], b",", b'""""\n'),
        ([b""], b",", b'""\n'),  # one empty field: an empty line would read back as no row
    ],
)
def test_format_row(values: list[bytes], separator: bytes, line: bytes) -> None:
    assert format_row(values, separator) == line


# ------------------------------------------------------------------------------------------
# Cleansing (REFERENCE §3)


def test_complete_entity_table() -> None:
    data = (
        BOM + b"Name,ID,junk\r\n"
        b"bob,b,1\r\n"
        b"al,a,2\r\n"
        b"nobody,,3\r\n"
        b"bobby,b,4\r\n"
        b'"al ""2""",a,5\r\n'
        b'eve,"",6\r\n'
    )
    result = reference_prepare(data, ENTITY)
    assert result.files == {
        # kept columns in source order and spelling; no BOM; LF; first occurrence kept
        "sorted": b"Name,ID\nal,a\nbob,b\n",
        "nullpk": b"Name,ID\nnobody,\neve,\n",  # input order; "" is null too
        "duplicates": b'Name,ID\n"al ""2""",a\nbobby,b\n',  # key order
    }
    assert (result.rows_read, result.kept, result.null_keys, result.duplicates) == (6, 2, 2, 2)
    assert reference_prepare(data, ENTITY, mode="Initial").files == result.files


def test_duplicates_are_in_key_order_then_input_order() -> None:
    data = b"id,name\nb,1\nb,2\na,3\nb,4\na,5\na,6\n"
    result = reference_prepare(data, ENTITY)
    assert result.files["sorted"] == b"id,name\na,3\nb,1\n"
    assert result.files["duplicates"] == b"id,name\na,5\na,6\nb,2\nb,4\n"


def test_order_is_bytewise_utf8_with_prefixes_first() -> None:
    spec = Spec("T", ("k",), ("k",))
    keys = [b"z", b"\xf0\x9f\x98\x80", b"ab", b"\xef\xbf\xbf", b"a", b"B", b"\xc3\xa9", b"a b"]
    data = b"k\n" + b"".join(key + b"\n" for key in keys)
    expected = [b"B", b"a", b"a b", b"ab", b"z", b"\xc3\xa9", b"\xef\xbf\xbf", b"\xf0\x9f\x98\x80"]
    assert reference_prepare(data, spec).files["sorted"] == b"k\n" + b"\n".join(expected) + b"\n"


def test_association_table_is_keyed_by_all_kept_columns_in_source_order() -> None:
    spec = Spec("members", ("DN", "Member"), None)
    data = (
        b"member,junk,dn\n"
        b"g1,x,u2\n"
        b"g1,y,u1\n"
        b"g1,z,u2\n"  # same key as the first row: a duplicate even though junk differs
        b",w,u3\n"
        b"g0,v,\n"  # ANY empty key column is a null key
        b"g,w,u9\n"  # g < g1 (prefix first); by (dn, member) it would come last
    )
    result = reference_prepare(data, spec)
    assert result.files == {
        "sorted": b"member,dn\ng,u9\ng1,u1\ng1,u2\n",
        "nullpk": b"member,dn\n,u3\ng0,\n",
        "duplicates": b"member,dn\ng1,u2\n",
    }


def test_composite_keys_compare_column_by_column() -> None:
    spec = Spec("T", ("a", "b"), None)
    # as one concatenated string "aba" < "az"; column by column "a" < "ab" decides first
    result = reference_prepare(b"a,b\nab,a\na,z\n", spec)
    assert result.files["sorted"] == b"a,b\na,z\nab,a\n"


def test_one_column_null_key_row_is_written_as_two_quotes() -> None:
    result = reference_prepare(b'id\n""\nx\n', Spec("T", ("ID",), ("id",)))
    assert result.files["nullpk"] == b'id\n""\n'
    assert rows_of(result.files["nullpk"]) == [[b"id"], [b""]]  # reads back as the row
    assert result.files["sorted"] == b"id\nx\n"


def test_header_only_file_is_an_empty_table() -> None:
    result = reference_prepare(b"id,name", ENTITY)
    assert result.files == {
        "sorted": b"id,name\n",
        "nullpk": b"id,name\n",
        "duplicates": b"id,name\n",
    }
    assert (result.rows_read, result.kept, result.null_keys, result.duplicates) == (0, 0, 0, 0)


def test_other_separator_quotes_only_what_it_must() -> None:
    spec = Spec("T", ("id", "a,b"), ("id",))
    result = reference_prepare(b'id;"a,b"\n2;"x;y"\n1;x,y\n', spec, separator=";")
    assert result.files["sorted"] == b'id;a,b\n1;x,y\n2;"x;y"\n'


def test_header_names_needing_quotes_are_quoted() -> None:
    spec = Spec("T", ('Q"T', "id"), ("id",))
    result = reference_prepare(b'id,"q""t"\n1,2\n', spec)
    assert result.files["sorted"] == b'id,"q""t"\n1,2\n'


# ------------------------------------------------------------------------------------------
# Incremental, full extract (REFERENCE §4)


def test_full_extract_delta() -> None:
    baseline = b"ID,name\na,al\nb,bob\nc,cy\n"  # header spelling may differ in case
    data = b"id,NAME,junk\nd,dan,1\nb,bobby,2\na,al,3\n"
    result = reference_prepare(data, ENTITY, mode="incremental", baseline=baseline)
    assert result.files == {
        "sorted": b"id,NAME\na,al\nb,bobby\nd,dan\n",
        "nullpk": b"id,NAME\n",
        "duplicates": b"id,NAME\n",
        # key order; update/insert carry new values, delete the baseline's; "a" is unchanged
        "delta": b"command,id,NAME\nupdate,b,bobby\ndelete,c,cy\ninsert,d,dan\n",
    }
    assert (result.inserts, result.updates, result.deletes, result.merges) == (1, 1, 1, 0)


def test_full_extract_delta_header_is_command_whatever_the_command_column() -> None:
    result = reference_prepare(
        b"id,name\na,1\n", ENTITY, mode="incremental", baseline=b"id,name\n", command_column="op"
    )
    assert result.files["delta"] == b"command,id,name\ninsert,a,1\n"


def test_baseline_errors() -> None:
    error = baseline_error(None)
    assert error.problem == "no baseline previous/T.sorted.csv"
    assert str(error) == (
        "table T: no baseline previous/T.sorted.csv; "
        "run a complete synchronization to rebuild the baseline"
    )
    differs = "baseline header differs from the kept columns"
    assert baseline_error(b"name,id\n").problem == differs  # same names, other order
    assert baseline_error(b"id,name,junk\n").problem == differs
    assert (
        baseline_error(b"id,name\na,1\na,2\n").problem == "baseline has a duplicate key at line 3"
    )
    assert baseline_error(b"id,name\nb,1\n\na,2\n").problem == (
        "baseline is not sorted by key at line 4"
    )
    assert baseline_error(b'id,name\na,"1\n', baseline_path="prev/x.csv").problem == (
        "baseline prev/x.csv, line 2: unterminated quote"
    )
    assert baseline_error(b"").problem == (
        "baseline previous/T.sorted.csv, line 1: empty file (no header)"
    )


def test_error_order_between_input_and_baseline() -> None:
    """Input header, then baseline presence and header, then input rows, then baseline rows."""
    bad_header, bad_row = b"id,ID\n", b"id,name\n1\n"
    error = input_error(bad_header, mode="incremental", baseline=None)
    assert error.problem == "duplicated header name 'ID'"
    with pytest.raises(BaselineError, match="no baseline"):
        reference_prepare(bad_row, ENTITY, mode="incremental", baseline=None)
    with pytest.raises(BaselineError, match="header differs"):
        reference_prepare(bad_row, ENTITY, mode="incremental", baseline=b"x\n")
    with pytest.raises(BaselineError, match=r"line 1: unterminated quote"):
        reference_prepare(bad_row, ENTITY, mode="incremental", baseline=b'"id,name\n')
    error = input_error(bad_row, mode="incremental", baseline=b"id,name\nb,1\na,1\n")
    assert error.problem == "expected 2 fields, found 1"
    error = input_error(bad_row, mode="incremental", baseline=b'id,name\n"a')
    assert error.problem == "expected 2 fields, found 1"


# ------------------------------------------------------------------------------------------
# Incremental, change file (REFERENCE §4)


def test_change_file() -> None:
    data = (
        b"id,Command,name\n"
        b"b,INSERT,bob\n"
        b"a,update,al\n"
        b"b,Delete,bob2\n"  # last change per key wins
        b",merge,x\n"
        b"c,Merge,cy\n"
    )
    result = reference_prepare(data, ENTITY, mode="incremental", baseline=None)
    assert result.files == {  # no "sorted": a change file never becomes a baseline
        # the command's header is "command" whatever the source spelled
        "delta": b"command,id,name\nupdate,a,al\ndelete,b,bob2\nmerge,c,cy\n",
        "nullpk": b"command,id,name\nmerge,,x\n",
        "duplicates": b"command,id,name\ninsert,b,bob\n",
    }
    assert (result.rows_read, result.kept, result.null_keys, result.duplicates) == (5, 3, 1, 1)
    assert (result.inserts, result.updates, result.deletes, result.merges) == (0, 1, 1, 1)


def test_change_file_with_another_command_column() -> None:
    result = reference_prepare(
        b"OP,id,name\ninsert,a,1\n", ENTITY, mode="incremental", command_column="op"
    )
    assert result.files["delta"] == b"command,id,name\ninsert,a,1\n"


def test_commands_in_any_case_and_add_means_merge() -> None:
    data = b"Command,id,name\nAdd,a,1\nINSERT,b,2\nuPdAtE,c,3\nDelete,d,4\nmErGe,e,5\nADD,f,6\n"
    result = reference_prepare(data, ENTITY, mode="incremental")
    assert result.files["delta"] == (
        b"command,id,name\nmerge,a,1\ninsert,b,2\nupdate,c,3\ndelete,d,4\nmerge,e,5\nmerge,f,6\n"
    )
    assert (result.inserts, result.updates, result.deletes, result.merges) == (1, 1, 1, 3)


def test_invalid_command() -> None:
    error = input_error(b"id,command,name\na,insert,1\nb,upsert,2\nc,bad,3\n", mode="incremental")
    assert (error.line, error.offset) == (3, 27)
    assert (
        error.problem == "invalid command 'upsert' (expected insert, update, delete, merge or add)"
    )
    error = input_error(b'id,command,name\na,"del\nete",1\n', mode="complete")
    assert (
        error.problem == "invalid command 'del ete' (expected insert, update, delete, merge or add)"
    )
    error = input_error(b"id,command,name\na,insert,1\n,,1\n", mode="incremental")
    assert (error.line, error.offset, error.problem) == (
        3,
        27,
        "empty command (expected insert, update, delete, merge or add)",  # before the null key
    )
    assert input_error(b'id,command,name\nb,"",2\n', mode="incremental").problem.startswith(
        "empty command"  # "" is empty too
    )


def test_change_file_in_complete_mode_is_replayed_from_empty() -> None:
    data = (
        b"id,COMMAND,name\n"
        b"b,insert,bob\n"
        b"a,Add,al\n"
        b"c,insert,cy\n"
        b"b,update,bobby\n"  # the last row of a key wins
        b"c,delete,cy\n"  # a final delete: c is absent
        b",insert,nobody\n"
        b"d,,dan\n"  # an empty command is an insert
        b"e,delete,eve\n"
        b"e,merge,eve2\n"  # deleted, then back
    )
    for mode in ("complete", "Initial"):
        result = reference_prepare(data, ENTITY, mode=mode)
        assert result.files == {
            "sorted": b"id,name\na,al\nb,bobby\nd,dan\ne,eve2\n",  # no command: a full extract
            "nullpk": b"command,id,name\ninsert,,nobody\n",
            # superseded rows and final deletes, in key order then input order
            "duplicates": (
                b"command,id,name\ninsert,b,bob\ninsert,c,cy\ndelete,c,cy\ndelete,e,eve\n"
            ),
        }
        assert (result.rows_read, result.kept, result.null_keys, result.duplicates) == (9, 4, 1, 4)
        assert (result.inserts, result.updates, result.deletes, result.merges) == (0, 0, 0, 0)


def test_a_kept_command_column_is_just_a_column() -> None:
    spec = Spec("T", ("id", "command"), ("id",))
    result = reference_prepare(b"id,command\nb,Foo\na,INSERT\n", spec)
    assert result.files["sorted"] == b"id,command\na,INSERT\nb,Foo\n"  # kept as is


# ------------------------------------------------------------------------------------------
# Properties of the reference itself


@st.composite
def tables(draw: st.DrawFn) -> tuple[bytes, list[list[bytes]]]:
    """(separator, rows incl. header) with one width; no one-column empty row (a blank line)."""
    separator = draw(separators()).encode()
    width = draw(st.integers(1, 4))
    row = st.lists(values(), min_size=width, max_size=width)
    rows = draw(st.lists(row.filter(lambda r: r != [b""]), min_size=1, max_size=6))
    return separator, rows


@FAST
@given(tables())
def test_parse_reads_back_what_format_row_writes(table: tuple[bytes, list[list[bytes]]]) -> None:
    separator, rows = table
    data = b"".join(format_row(row, separator) for row in rows)
    assert rows_of(data, separator) == rows


@FAST
@given(csv_cases())
def test_generated_files_parse_to_their_table(case: CsvCase) -> None:
    expected = [[name.encode() for name in case.header]] + [list(row) for row in case.rows]
    assert rows_of(case.data, case.separator.encode()) == expected


@FAST
@given(csv_cases(), st.data())
def test_outputs_do_not_depend_on_the_encoding(case: CsvCase, data: st.DataObject) -> None:
    other = data.draw(encoded_csv(case.header, case.rows, case.separator)).data
    first = reference_prepare(case.data, case.spec, separator=case.separator)
    assert reference_prepare(other, case.spec, separator=case.separator) == first


def key_positions(spec: Spec, header: list[bytes]) -> list[int]:
    names = spec.columns if spec.key is None else spec.key
    wanted = {fold(name) for name in names}
    return [i for i, name in enumerate(header) if fold(name.decode()) in wanted]


@FAST
@given(csv_cases())
def test_every_row_lands_in_exactly_one_file(case: CsvCase) -> None:
    result = reference_prepare(case.data, case.spec, separator=case.separator)
    assert result.rows_read == len(case.rows)
    assert result.kept + result.null_keys + result.duplicates == result.rows_read
    sep = case.separator.encode()
    header, *kept = rows_of(result.files["sorted"], sep)
    assert len(kept) == result.kept
    assert len(rows_of(result.files["duplicates"], sep)) - 1 == result.duplicates
    if len(header) == 1:  # one-column null rows are empty lines, which parsing would skip
        assert result.files["nullpk"] == format_row(header, sep) + b'""\n' * result.null_keys
    else:
        assert len(rows_of(result.files["nullpk"], sep)) - 1 == result.null_keys


@FAST
@given(csv_cases())
def test_sorted_is_strictly_ascending_and_covers_every_non_null_key(case: CsvCase) -> None:
    result = reference_prepare(case.data, case.spec, separator=case.separator)
    sep = case.separator.encode()
    header, *rows = rows_of(result.files["sorted"], sep)
    keys = [tuple(row[i] for i in key_positions(case.spec, header)) for row in rows]
    assert keys == sorted(set(keys))
    assert all(b"" not in key for key in keys)
    source = [case.header.index(name.decode()) for name in header]
    input_keys = {
        key
        for row in case.rows
        if b"" not in (key := tuple(row[source[i]] for i in key_positions(case.spec, header)))
    }
    assert set(keys) == input_keys
    duplicates = rows_of(result.files["duplicates"], sep)[1:]
    duplicate_keys = [tuple(row[i] for i in key_positions(case.spec, header)) for row in duplicates]
    assert duplicate_keys == sorted(duplicate_keys) and set(duplicate_keys) <= set(keys)


@FAST
@given(incremental_cases())
def test_applying_the_delta_to_the_baseline_gives_the_new_sorted_rows(
    case: IncrementalCase,
) -> None:
    sep = case.new.separator
    old = reference_prepare(case.old.data, case.spec, separator=sep)
    new = reference_prepare(
        case.new.data, case.spec, mode="incremental", baseline=old.files["sorted"], separator=sep
    )
    header, *baseline_rows = rows_of(old.files["sorted"], sep.encode())
    positions = key_positions(case.spec, header)
    table = {tuple(row[i] for i in positions): row for row in baseline_rows}
    _, *delta = rows_of(new.files["delta"], sep.encode())
    delta_keys = []
    for command, *row in delta:
        key = tuple(row[i] for i in positions)
        delta_keys.append(key)
        assert (command == b"insert") == (key not in table)
        if command == b"delete":
            assert table.pop(key) == row  # a delete carries the baseline's values
        else:
            assert table.get(key) != row  # unchanged rows are left out
            table[key] = row
    assert delta_keys == sorted(set(delta_keys))
    assert [table[key] for key in sorted(table)] == rows_of(new.files["sorted"], sep.encode())[1:]
    commands = [row[0] for row in delta]
    counts = (new.inserts, new.updates, new.deletes)
    assert counts == tuple(commands.count(c) for c in (b"insert", b"update", b"delete"))


@FAST
@given(change_file_cases())
def test_change_file_keeps_the_last_change_per_key(case: CsvCase) -> None:
    result = reference_prepare(
        case.data,
        case.spec,
        mode="incremental",
        separator=case.separator,
        command_column=case.command_column,
    )
    assert "sorted" not in result.files
    header, *delta = rows_of(result.files["delta"], case.separator.encode())
    assert header[0] == b"command"
    command_at = [fold(name) for name in case.header].index(fold(case.command_column))
    source = [command_at] + [case.header.index(name.decode()) for name in header[1:]]
    positions = key_positions(case.spec, header)
    last = {}
    for row in case.rows:
        key = tuple(row[source[i]] for i in positions)
        if b"" not in key:
            command = row[command_at].lower().replace(b"add", b"merge")
            last[key] = [command if n == 0 else row[i] for n, i in enumerate(source)]
    assert delta == [last[key] for key in sorted(last)]
    assert all(row[0] in COMMANDS for row in delta)
    counts = (result.inserts, result.updates, result.deletes, result.merges)
    assert counts == tuple([row[0] for row in delta].count(c) for c in COMMANDS)
    assert result.kept + result.null_keys + result.duplicates == result.rows_read == len(case.rows)


@settings(max_examples=200, deadline=None)
@given(malformed_cases())
def test_malformed_files_raise_the_expected_error(case: MalformedCase) -> None:
    error = input_error(
        case.data,
        case.spec,
        mode=case.mode,
        separator=case.separator,
        command_column=case.command_column,
    )
    assert (error.line, error.offset) == (case.line, case.offset)
    assert error.problem.startswith(case.problem)  # it may go on to name the likely cause


@settings(max_examples=25, deadline=None)
@given(csv_cases())
def test_write_spec_describes_the_spec(case: CsvCase) -> None:
    config = pytest.importorskip("prepsync.config")
    xml = spec_xml([case.spec], connector="AD")
    assert xml.startswith('<?xml version="1.0" encoding="utf-8"?>\n<ConfigurationFile>')
    with tempfile.TemporaryDirectory() as folder:
        path = write_spec(Path(folder, "conf.xml"), [case.spec], connector="AD")
        (table,) = config.load_tables(path, "AD")
    assert (table.name, table.columns, table.key) == (
        case.spec.name,
        case.spec.columns,
        case.spec.key,
    )
