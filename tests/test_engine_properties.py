"""The native engine against the plain-Python reference (tests/reference.py).

Hypothesis draws tables (quoting, CRLF, BOM, unicode, NUL, duplicate and null keys, composite
keys), feeds them in blocks of every size from 1 byte, and runs them at budgets from a few
hundred bytes (dozens of runs, multi-pass merges) to 1 GiB (one run in memory): every output
byte, count and error must be the reference's.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import ReferenceResult, format_row, parse_csv, reference_prepare
from strategies import (
    Spec,
    change_file_cases,
    csv_cases,
    encoded_body,
    incremental_cases,
    malformed_cases,
)

from prepsync import _cleanse
from prepsync.dialect import ReadSettings
from prepsync.errors import BaselineError, InputError
from prepsync.pipeline import SUFFIXES, ColumnPlan, EngineFiles, prepare_table
from prepsync.request import TableJob

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
budgets = st.sampled_from([256, 700, 4096, 1 << 20, 1 << 30])
read_blocks = st.one_of(st.integers(1, 64), st.just(None))

Outcome = dict[str, Any] | tuple[Any, ...]


def native(data: bytes, spec: Any, budget: int, read_block: int | None, **options: Any) -> Outcome:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        source, out = root / "in.csv", root / "out"
        source.write_bytes(data)
        out.mkdir()
        baseline = options.pop("baseline", None)
        baseline_path = None
        if options.get("mode") == "incremental":
            baseline_path = root / "previous.csv"
            if baseline is not None:
                baseline_path.write_bytes(baseline)
        try:
            result = prepare_table(
                TableJob(
                    source=source,
                    spec=spec,
                    baseline=baseline_path,
                    memory_budget=budget,
                    read_block=read_block,
                    **options,
                ),
                out,
            )
        except InputError as error:
            return ("InputError", error.line, error.problem, error.offset)
        except BaselineError as error:
            return ("BaselineError", error.problem.split(":")[0])
        finally:
            assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}
        files = {
            kind: (out / f"{spec.name}{suffix}").read_bytes()
            for kind, suffix in SUFFIXES.items()
            if (out / f"{spec.name}{suffix}").exists()
        }
        assert sorted(p.name for p in out.iterdir()) == sorted(
            f"{spec.name}{SUFFIXES[kind]}" for kind in files
        ), "no temporary or spill file may be left"
        return {"files": files, "counts": counts(result)}


def reference(data: bytes, spec: Any, **options: Any) -> Outcome:
    try:
        result = reference_prepare(data, spec, **options)
    except InputError as error:
        return ("InputError", error.line, error.problem, error.offset)
    except BaselineError as error:
        return ("BaselineError", error.problem.split(":")[0])
    return {"files": result.files, "counts": counts(result)}


# The row counts both the engine and the oracle report (the oracle keeps its own list).
ROW_COUNTS = (
    "rows_read",
    "kept",
    "null_keys",
    "duplicates",
    "inserts",
    "updates",
    "deletes",
    "merges",
)


def counts(result: Any) -> tuple[int, ...]:
    return tuple(getattr(result, name) for name in ROW_COUNTS)


@SETTINGS
@given(case=csv_cases(max_rows=40), budget=budgets, read_block=read_blocks)
def test_full_extract_matches_reference(case: Any, budget: int, read_block: int | None) -> None:
    options = {"separator": case.separator}
    assert native(case.data, case.spec, budget, read_block, **options) == reference(
        case.data, case.spec, **options
    )


@SETTINGS
@given(case=csv_cases(max_rows=40, link=True), budget=budgets, read_block=read_blocks)
def test_link_table_matches_reference(case: Any, budget: int, read_block: int | None) -> None:
    """Association tables keep only their key columns: the engine stores each row as its key
    alone and rebuilds the line from it, which must give the reference's bytes exactly."""
    options = {"separator": case.separator}
    assert native(case.data, case.spec, budget, read_block, **options) == reference(
        case.data, case.spec, **options
    )


@SETTINGS
@given(case=incremental_cases(link=True), budget=budgets, read_block=read_blocks)
def test_link_table_delta_matches_reference(case: Any, budget: int, read_block: int | None) -> None:
    """The rebuilt lines meet the baseline's rows, unchanged ones by their raw bytes."""
    baseline = reference_prepare(case.old.data, case.spec, separator=case.old.separator)
    options = {
        "mode": "incremental",
        "separator": case.new.separator,
        "baseline": baseline.files["sorted"],
    }
    assert native(case.new.data, case.spec, budget, read_block, **dict(options)) == reference(
        case.new.data, case.spec, **options
    )


@SETTINGS
@given(case=change_file_cases(), budget=budgets, read_block=read_blocks)
def test_change_file_matches_reference(case: Any, budget: int, read_block: int | None) -> None:
    options = {
        "mode": "incremental",
        "separator": case.separator,
        "command_column": case.command_column,
    }
    assert native(case.data, case.spec, budget, read_block, **options) == reference(
        case.data, case.spec, **options
    )


@SETTINGS
@given(
    case=change_file_cases(replay=True),
    mode=st.sampled_from(["initial", "complete", "Complete"]),
    budget=budgets,
    read_block=read_blocks,
)
def test_replayed_change_file_matches_reference(
    case: Any, mode: str, budget: int, read_block: int | None
) -> None:
    """initial/complete: the change stream replayed from empty into a full extract."""
    options = {"mode": mode, "separator": case.separator, "command_column": case.command_column}
    assert native(case.data, case.spec, budget, read_block, **options) == reference(
        case.data, case.spec, **options
    )


@SETTINGS
@given(case=incremental_cases(), budget=budgets, read_block=read_blocks)
def test_delta_matches_reference_and_applies(
    case: Any, budget: int, read_block: int | None
) -> None:
    baseline = reference_prepare(case.old.data, case.spec, separator=case.old.separator)
    old_sorted = baseline.files["sorted"]
    options = {"mode": "incremental", "separator": case.new.separator, "baseline": old_sorted}
    got = native(case.new.data, case.spec, budget, read_block, **dict(options))
    assert got == reference(case.new.data, case.spec, **options)
    if isinstance(got, dict):
        assert apply_delta(old_sorted, got["files"]["delta"], case) == rows_of(
            got["files"]["sorted"], case
        )


@st.composite
def recognisable_baselines(draw: st.DrawFn) -> tuple[Any, bytes]:
    """An incremental case and a baseline with the old extract's rows, most of them written
    byte for byte as the engine writes them, so that the join meets its fast path (a baseline
    record that is exactly a kept row's line is skipped unparsed) as well as everything that
    must miss it: CRLF line ends, other quoting, blank lines, a last row without its LF; and
    sometimes a repeated row or two rows swapped, which must be refused at the same line as
    the reference's after rows skipped unparsed."""
    case = draw(incremental_cases())
    sep = case.old.separator.encode()
    canonical = reference_prepare(case.old.data, case.spec, separator=case.old.separator)
    records = parse_csv(canonical.files["sorted"], sep, "<baseline>")
    header, rows = records[0][1], [fields for _, fields in records[1:]]
    defect = draw(st.sampled_from(["none", "none", "repeat", "swap"])) if rows else "none"
    if defect != "none":
        at = draw(st.integers(0, len(rows) - 1))
        if defect == "repeat":
            rows.insert(at, rows[at])
        elif at + 1 < len(rows) and rows[at] != rows[at + 1]:
            rows[at], rows[at + 1] = rows[at + 1], rows[at]
    data = format_row(header, sep)
    for index, row in enumerate(rows):
        shape = draw(st.sampled_from(["as written"] * 4 + ["requoted", "crlf", "blank before"]))
        body = draw(encoded_body(row, sep)) if shape == "requoted" else format_row(row, sep)[:-1]
        if shape == "blank before":
            data += b"\n"
        if shape == "crlf":
            data += body + b"\r\n"
        elif index == len(rows) - 1 and draw(st.booleans()):
            data += body  # no LF at the end of the file
        else:
            data += body + b"\n"
    return case, data


@SETTINGS
@given(
    case_and_baseline=recognisable_baselines(),
    budget=budgets,
    read_block=st.one_of(st.integers(1, 64), st.just(None)),
)
def test_delta_against_a_baseline_of_our_own_rows_matches_reference(
    case_and_baseline: tuple[Any, bytes], budget: int, read_block: int | None
) -> None:
    """A small read_block also cuts the baseline's reads, so records recognised by their bytes
    straddle buffer ends at every position."""
    case, baseline = case_and_baseline
    options = {"mode": "incremental", "separator": case.new.separator, "baseline": baseline}
    assert native(case.new.data, case.spec, budget, read_block, **dict(options)) == reference(
        case.new.data, case.spec, **options
    )


# (baseline, new extract): a baseline record is skipped unparsed only when it is byte for byte
# the new row's line and an LF; each of these is one byte away from that.
NEAR_MISSES = [
    (b"id,name\n1,Ann\n2,Bob\n", b"id,name\n2,Bob\n1,Anna\n"),  # a row a prefix of the new one
    (b"id,name\n1,Anna\n2,Bob\n", b"id,name\n2,Bob\n1,Ann\n"),  # the new row a prefix of it
    (b'id,name\n1,Ann"x\n2,Bob\n', b"id,name\n1,Ann\n2,Bob\n"),  # more bytes after it
    (b"id,name\n1,Ann\n2,Bob", b"id,name\n1,Ann\n2,Bob\n"),  # no LF at the end
    (b"id,name\r\n1,Ann\r\n2,Bob\r\n", b"id,name\n1,Ann\n2,Bob\n"),  # CRLF
    (b'id,name\n"1",Ann\n2,"Bob"\n', b"id,name\n1,Ann\n2,Bob\n"),  # other quoting
    (b'id,name\n1,"A\nB"\n2,Bob\n2,Bob\n', b'id,name\n1,"A\nB"\n2,Bob\n'),  # duplicate: line 5
    (b'id,name\n1,"A\nB"\n3,Cy\n2,Bob\n', b'id,name\n1,"A\nB"\n3,Cy\n2,Bob\n'),  # unsorted: 5
    (b"id,name\n1,Ann\n\n2,Bob\n1,Ann\n", b"id,name\n1,Ann\n2,Bob\n"),  # blank line, unsorted
]


@pytest.mark.parametrize(("baseline", "data"), NEAR_MISSES)
@pytest.mark.parametrize("read_block", [1, 2, 3, 5, 8, None])
def test_baseline_rows_that_nearly_match_are_joined_as_parsed(
    baseline: bytes, data: bytes, read_block: int | None
) -> None:
    spec = Spec("T", ("id", "name"), ("id",))
    options = {"mode": "incremental", "baseline": baseline}
    assert native(data, spec, 4096, read_block, **dict(options)) == reference(data, spec, **options)


def rows_of(data: bytes, case: Any) -> dict[tuple[bytes, ...], list[bytes]]:
    """A sorted file's rows by key (key columns found by the spec, in header order)."""
    records = parse_csv(data, case.new.separator.encode(), "<file>")
    header = [name.decode() for name in records[0][1]]
    if case.spec.key is None:
        key_at = list(range(len(header)))
    else:
        key_at = [[h.casefold() for h in header].index(k.casefold()) for k in case.spec.key]
    return {tuple(fields[i] for i in key_at): fields for _, fields in records[1:]}


def apply_delta(old: bytes, delta: bytes, case: Any) -> dict[tuple[bytes, ...], list[bytes]]:
    """The old table with the delta applied as the server would, refusing impossible commands."""
    table = rows_of(old, case)
    records = parse_csv(delta, case.new.separator.encode(), "<delta>")
    header = [name.decode() for name in records[0][1]][1:]
    key_at = (
        list(range(len(header)))
        if case.spec.key is None
        else [[h.casefold() for h in header].index(k.casefold()) for k in case.spec.key]
    )
    for _, fields in records[1:]:
        command, values = fields[0], fields[1:]
        key = tuple(values[i] for i in key_at)
        if command == b"insert":
            assert key not in table
            table[key] = values
        elif command == b"update":
            assert table.get(key) not in (None, values)
            table[key] = values
        else:
            assert command == b"delete" and table.pop(key) == values
    return table


@SETTINGS
@given(case=malformed_cases(), budget=budgets, read_block=read_blocks)
def test_bad_input_matches_reference(case: Any, budget: int, read_block: int | None) -> None:
    options = {
        "mode": case.mode,
        "separator": case.separator,
        "command_column": case.command_column,
    }
    got = native(case.data, case.spec, budget, read_block, **options)
    assert got == reference(case.data, case.spec, **options)
    # Messages may go on to name the likely cause (an encoding, a separator).
    assert got[:2] == ("InputError", case.line) and got[2].startswith(case.problem)


@pytest.mark.parametrize("budget", [256, 1 << 30])
def test_tiny_budget_really_spills_and_merges_in_passes(tmp_path: Path, budget: int) -> None:
    """The property tests' small budgets are only meaningful if they do force many runs."""
    from prepsync.config import TableSpec, Thresholds

    spec = TableSpec(name="t", columns=("k", "v"), key=("k",), thresholds=Thresholds())
    source = tmp_path / "in.csv"
    source.write_bytes(b"k,v\n" + b"".join(b"%d,%d\n" % ((i * 37) % 41, i) for i in range(80)))
    result = prepare_table(TableJob(source=source, spec=spec, memory_budget=budget), tmp_path)
    if budget == 256:
        assert result.runs >= 8 and result.merge_passes >= 2
    else:
        assert result.runs == 0
    expected = reference_prepare(source.read_bytes(), spec)
    assert isinstance(expected, ReferenceResult)
    assert (tmp_path / "t.sorted.csv").read_bytes() == expected.files["sorted"]


REFUSED_SHAPES = [
    "id,name\r\n1,a\r\n".encode("utf-16-le"),  # no byte-order mark: named, not misread
    "id\n".encode("utf-32-be"),
    "\ufeffid\n1\n".encode("utf-16-le") + b"\x00\xd8" + "x\n".encode("utf-16-le"),
    "\ufeff#TYPE x\r\nid\r\n".encode("utf-16-be"),  # found in the text, named at its byte
    "\ufeffid\r\n1\r".encode("utf-16-le") + b"\x00",  # a cut character at the end
    b'#TYPE System.Management.Automation.PSCustomObject\r\n"id","name"\r\n"1","a"\r\n',
    b"\xef\xbb\xbf\n#TYPE x\n",
    b"id,name,dept\rE1,Ann,IT\rE2,Bob,HR\r",
    b'"id","name"\r"1","a"\r',
    b"id\r",
    # CR-only with a first line longer than any read block: refused at the first CR all the same
    b"id," + b"x" * 300_000 + b"\r" + b"1,a\r" * 100_000,
]


@pytest.mark.parametrize("data", REFUSED_SHAPES)
@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, 64, 65536])
def test_refused_shapes_fail_alike_whatever_the_read_size(
    tmp_path: Path, data: bytes, block: int
) -> None:
    """Both tokenizers (the header reader and the engine's) give the reference's error for
    every read size: the cause is found where it stands, not where a buffer happens to end."""
    if len(data) > 100_000 and block < 64:
        block *= 4096  # a few MB one byte at a time would only test patience
    with pytest.raises(InputError) as expected:
        reference_prepare(data, Spec("T", ("id",), ("id",)), path=str(tmp_path / "in.csv"))
    want = (expected.value.line, expected.value.offset, expected.value.problem)
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    with pytest.raises(InputError) as caught:
        _cleanse.read_header(str(source), b",", 16 << 20, block, settings=ReadSettings())
    assert (caught.value.line, caught.value.offset, caught.value.problem) == want
    with open(source, "rb") as reader, open(os.devnull, "wb") as sink:
        engine = _cleanse.Cleanser(
            TableJob(
                spec=Spec("T", ("id",), ("id",)),
                source=source,
                memory_budget=16 << 20,
                settings=ReadSettings(),
            ),
            # The header is refused before it is planned: the plan it would have had.
            ColumnPlan(
                kept_names=["id"], out_cols=[0], key_cols=[0], command_col=-1, baseline_key_cols=[0]
            ),
            EngineFiles(
                spill_dir=tmp_path,
                sorted_fd=sink.fileno(),
                nullpk_fd=sink.fileno(),
                duplicates_fd=sink.fileno(),
            ),
        )
        try:
            with pytest.raises(InputError) as caught:
                while engine.read_from(reader.fileno(), block):
                    pass
                engine.finish_input()
        finally:
            engine.close()
    assert (caught.value.line, caught.value.offset, caught.value.problem) == want


TOO_LARGE = (
    "row too large for the 1 MiB memory budget: the longest allowed is 64 KiB (budget / 16); "
    "unterminated quote?"
)


@pytest.mark.parametrize("block", [1000, 4096, 65536, 1 << 20])
@pytest.mark.parametrize(
    ("bad_at", "problem"),
    [
        (None, TOO_LARGE),
        (50_000, "text after closing quote"),  # within the limit: that error, always
        (66_000, TOO_LARGE),
    ],
)
def test_a_row_over_the_limit_gets_one_error_whatever_the_read_size(
    tmp_path: Path, block: int, bad_at: int | None, problem: str
) -> None:
    """1 MiB affords 64 KiB a row. A 70 KB row is refused as too large however it is read,
    unless something is wrong within its first 64 KiB, which is then reported instead."""
    from prepsync.config import TableSpec, Thresholds

    spec = TableSpec(name="t", columns=("k", "v"), key=("k",), thresholds=Thresholds())
    value = bytearray(b"v" * 70_000)
    row = b"1," + bytes(value)
    if bad_at is not None:
        row = row[:bad_at] + b',"x"y,' + row[bad_at + 6 :]
    source = tmp_path / "in.csv"
    source.write_bytes(b"k,v\n" + row + b"\n2,b\n")
    with pytest.raises(InputError) as caught:
        prepare_table(
            TableJob(source=source, spec=spec, memory_budget=1 << 20, read_block=block), tmp_path
        )
    assert (caught.value.line, caught.value.problem) == (2, problem)
    if bad_at is None or bad_at > 65536:
        assert caught.value.offset == 4


@pytest.mark.parametrize("after", [b"", b"3," + b"c" * 100 + b"\n"], ids=["ends", "long-row-after"])
@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_the_longest_row_allowed_and_one_byte_more(
    tmp_path: Path, after: bytes, quoted: bool
) -> None:
    """At 1 MiB the limit is 64 KiB: a row of 64 KiB and its LF is taken, one byte more is
    refused, whether the general path or the 64-byte masks split it (a long row after it lets
    the masks reach its end)."""
    from prepsync.config import TableSpec, Thresholds

    spec = TableSpec(name="t", columns=("k", "v"), key=("k",), thresholds=Thresholds())
    for extra, refused in ((0, False), (1, True)):
        width = 65536 - 2 + extra  # "1," then the value: 64 KiB + extra bytes before the LF
        value = b'"' + b"v" * (width - 2) + b'"' if quoted else b"v" * width
        source = tmp_path / "in.csv"
        source.write_bytes(b"k,v\n1," + value + b"\n2,b\n" + after)
        job = TableJob(source=source, spec=spec, memory_budget=1 << 20)
        if refused:
            with pytest.raises(InputError) as caught:
                prepare_table(job, tmp_path)
            assert (caught.value.line, caught.value.problem) == (2, TOO_LARGE)
        else:
            assert prepare_table(job, tmp_path).kept == 2 + bool(after)


def test_an_intermediate_pass_merges_only_what_the_final_merge_cannot_read(
    tmp_path: Path,
) -> None:
    """A few runs more than one merge can read: the intermediate pass merges only enough of
    them to bring the rest within the final merge's fan-in, instead of rewriting every run
    (the spilled bytes say how much went through it); the outputs are those of a run that
    never spilled."""
    from prepsync.config import TableSpec, Thresholds

    spec = TableSpec(name="t", columns=("k", "v"), key=("k",), thresholds=Thresholds())
    source = tmp_path / "in.csv"
    rows = 120_000
    source.write_bytes(
        b"k,v\n" + b"".join(b"%08d,%s\n" % ((i * 7919) % rows, b"x" * 90) for i in range(rows))
    )
    outputs = {}
    for budget in (1536 << 10, 1 << 30):
        out = tmp_path / str(budget)
        out.mkdir()
        outputs[budget] = (
            prepare_table(TableJob(source=source, spec=spec, memory_budget=budget), out),
            out,
        )
    spilled, spilled_out = outputs[1536 << 10]
    assert spilled.runs >= 16 and spilled.merge_passes == 1
    records = rows * (8 + 8 + len(b"00000000,") + 90)  # header, key, line
    # Every record is spilled once; merging every run again would write them all twice.
    assert spilled.spill_bytes < 1.6 * records
    whole_out = outputs[1 << 30][1]
    for kind in ("sorted", "duplicates", "nullpk"):
        name = f"t.{kind}.csv"
        assert (spilled_out / name).read_bytes() == (whole_out / name).read_bytes()


def test_only_a_join_reserves_the_baselines_buffers_from_the_final_merge(tmp_path: Path) -> None:
    """The final merge's readers get what the outputs leave of the budget. Without a baseline
    to join, its tokenizer, read and delta writer are not reserved, so a small budget's merge
    reads more runs at once: here every run in one final merge, where the same runs joined
    with a baseline need a pass first. The outputs are the same either way."""
    from prepsync.config import TableSpec, Thresholds

    spec = TableSpec(name="t", columns=("k", "v"), key=("k",), thresholds=Thresholds())
    rows = 120_000
    source = tmp_path / "in.csv"
    source.write_bytes(
        b"k,v\n" + b"".join(b"%08d,%s\n" % ((i * 7919) % rows, b"x" * 90) for i in range(rows))
    )
    baseline = tmp_path / "baseline.csv"
    baseline.write_bytes(b"k,v\n" + b"".join(b"%08d,y\n" % i for i in range(0, rows, 2)))
    budget = 2 << 20
    complete, joined = tmp_path / "complete", tmp_path / "joined"
    complete.mkdir()
    joined.mkdir()
    full = prepare_table(TableJob(source=source, spec=spec, memory_budget=budget), complete)
    delta = prepare_table(
        TableJob(
            source=source, spec=spec, mode="incremental", baseline=baseline, memory_budget=budget
        ),
        joined,
    )
    assert full.runs == delta.runs >= 16
    assert full.merge_passes == 0 and delta.merge_passes == 1
    assert (complete / "t.sorted.csv").read_bytes() == (joined / "t.sorted.csv").read_bytes()
    assert (delta.inserts, delta.updates, delta.deletes) == (rows // 2, rows // 2, 0)


@pytest.mark.parametrize("block", [1000, 4096, 65536, None])
@pytest.mark.parametrize("bad_row", [5, 7001, 11999])
def test_invalid_utf8_far_into_a_file_is_named_whatever_the_read_size(
    block: int | None, bad_row: int
) -> None:
    """One bad byte among thousands of accented rows, read through a buffer that slides and
    refills many times (400 KB against 128 KiB at 1 MiB), mostly split by the 64-byte masks:
    found at its line and byte, whatever the read size."""
    spec = Spec("T", ("id", "value"), ("id",))
    rows = [b"k%05d,caf\xc3\xa9 cr\xc3\xa8me \xe2\x82\xac%d" % (i, i) for i in range(12000)]
    rows[bad_row] = rows[bad_row][:-4] + b"\xe2\x28" + rows[bad_row][-2:]
    data = b"id,value\n" + b"\n".join(rows) + b"\n"
    want = reference(data, spec)
    assert want[0] == "InputError" and want[1] == bad_row + 2
    assert native(data, spec, 1 << 20, block) == want
