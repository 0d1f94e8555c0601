"""Association (link) tables: every kept column is a key column, so the engine stores each row
as its key alone and rebuilds the output line from the key as the row leaves the final merge.
The rebuilt line must be the one the input row formats to: quoted only when a value holds the
separator, a quote, CR or LF; NULs inside a value of a two-column key recovered; duplicates
written as the row they repeat."""

from __future__ import annotations

from pathlib import Path

import pytest
from reference import ReferenceResult, reference_prepare

from prepsync.config import TableSpec, Thresholds
from prepsync.pipeline import prepare_table

MEMBERS = TableSpec("members", ("dn", "member"), None, Thresholds())

# Unsorted, with a value holding the separator (quoted on output), one holding ";" (not the
# separator: written bare), a quote, a CR, an LF, NULs inside a two-column key's first value,
# and duplicates written in other quotings than the canonical one.
SOURCE = (
    b"dn,member,note\n"
    b'"CN=G2,OU=Groups",CN=U1,x\n'
    b'G1,"a;b",x\n'
    b'"CN=G2,OU=Groups","CN=U1",dup\n'
    b'"a\x00b",u,x\n'
    b'"a\x00",u,x\n'
    b'a,"\x00\x01",x\n'
    b'"q""t",m,x\n'
    b"c\rr,m,x\n"
    b'"l\nf",m,x\n'
    b'"G1","a;b",dup\n'
    b'"a\x00b",u,dup\n'
    b'G1,",",x\n'
)
SORTED = (
    b'"CN=G2,OU=Groups",CN=U1\n'
    b'G1,","\n'
    b"G1,a;b\n"
    b"a,\x00\x01\n"  # "a" sorts before "a\x00": a shorter value first
    b"a\x00,u\n"
    b"a\x00b,u\n"
    b'"c\rr",m\n'
    b'"l\nf",m\n'
    b'"q""t",m\n'
)
DUPLICATES = b'"CN=G2,OU=Groups",CN=U1\nG1,a;b\na\x00b,u\n'


@pytest.mark.parametrize("budget", [256, 700, 1 << 30])
def test_link_rows_are_rebuilt_from_their_keys(tmp_path: Path, budget: int) -> None:
    source = tmp_path / "members.csv"
    source.write_bytes(SOURCE)
    out = tmp_path / "out"
    out.mkdir()
    result = prepare_table(source, MEMBERS, out, memory_budget=budget)
    assert (out / "members.sorted.csv").read_bytes() == b"dn,member\n" + SORTED
    assert (out / "members.duplicates.csv").read_bytes() == b"dn,member\n" + DUPLICATES
    assert (result.kept, result.duplicates) == (9, 3)
    if budget == 256:
        assert result.runs > 1  # the rows went through spill files, not only memory
    expected = reference_prepare(SOURCE, MEMBERS)
    assert isinstance(expected, ReferenceResult)
    assert (out / "members.sorted.csv").read_bytes() == expected.files["sorted"]


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_link_value_holding_the_separator_is_quoted(tmp_path: Path, separator: str) -> None:
    sep = separator.encode()
    source = tmp_path / "members.csv"
    source.write_bytes(
        sep.join([b"dn", b"member"]) + b"\n" + sep.join([b'"a' + sep + b'b"', b"a,b"]) + b"\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    prepare_table(source, MEMBERS, out, memory_budget=256, separator=separator)
    line = b'"a' + sep + b'b"' + sep + b"a,b\n"
    assert (out / "members.sorted.csv").read_bytes().splitlines(keepends=True)[1] == line


def test_link_records_hold_the_key_once(tmp_path: Path) -> None:
    """The point of storing the key alone: the same rows need about half the runs of a table
    whose lines are stored beside their keys (same key columns, output in another order)."""
    source = tmp_path / "members.csv"
    source.write_bytes(
        b"dn,member\n"
        + b"".join(
            b'"CN=Group %04d,OU=Groups,DC=corp,DC=example","CN=User %05d,OU=Users,DC=corp"\n'
            % (i % 97, i)
            for i in range(3000)
        )
    )
    link_out, plain_out = tmp_path / "link", tmp_path / "plain"
    link_out.mkdir()
    plain_out.mkdir()
    link = prepare_table(source, MEMBERS, link_out, memory_budget=64 << 10)
    # Keyed by (member, dn) but written dn, member: lines are stored beside the keys.
    plain_spec = TableSpec("members", ("dn", "member"), ("member", "dn"), Thresholds())
    plain = prepare_table(source, plain_spec, plain_out, memory_budget=64 << 10)
    assert link.kept == plain.kept == 3000
    assert plain.runs >= 4
    assert link.runs <= 0.7 * plain.runs  # records of 100 bytes instead of 177
