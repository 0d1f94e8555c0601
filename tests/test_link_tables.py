"""Association (link) tables: every kept column is a key column, so the engine stores each row
as its key alone and rebuilds the output line from the key as the row leaves the final merge.
The rebuilt line must be the one the input row formats to: quoted only when a value holds the
separator, a quote, CR or LF; NULs inside a value of a two-column key recovered; duplicates
written as the row they repeat."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
from reference import ReferenceResult, reference_prepare

from prepsync.config import TableSpec, Thresholds
from prepsync.pipeline import prepare_table
from prepsync.request import TableJob

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
    result = prepare_table(TableJob(source=source, spec=MEMBERS, memory_budget=budget), out)
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
    prepare_table(
        TableJob(source=source, spec=MEMBERS, memory_budget=256, separator=separator), out
    )
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
    link = prepare_table(TableJob(source=source, spec=MEMBERS, memory_budget=64 << 10), link_out)
    # Keyed by (member, dn) but written dn, member: lines are stored beside the keys.
    plain_spec = TableSpec("members", ("dn", "member"), ("member", "dn"), Thresholds())
    plain = prepare_table(
        TableJob(source=source, spec=plain_spec, memory_budget=64 << 10), plain_out
    )
    assert link.kept == plain.kept == 3000
    assert plain.runs >= 4
    assert link.runs <= 0.7 * plain.runs  # records of 100 bytes instead of 177


def member_export(groups: int, seed: int) -> bytes:
    """Member rows as a directory exports them (each group's members together, groups in no
    order), keys sharing long prefixes, with exact repeats and values that end where another
    goes on (prefixes of each other)."""
    rng = random.Random(seed)
    ou = b",OU=Groups,OU=Identity and Access Management,OU=Information Technology,OU=Europe"
    lines = [b"dn,member\n"]
    for group in rng.sample(range(groups * 10), groups):
        dn = b'"CN=GRP-%d%s,OU=Site %d,DC=corp,DC=example"' % (group, ou, group % 5)
        for _ in range(rng.randrange(3, 11)):
            member = rng.choice(
                [
                    b'"CN=User %d,OU=Users,DC=corp,DC=example"' % rng.randrange(groups * 7),
                    b"CN=U%d" % rng.randrange(50),
                    b"CN=U%d0" % rng.randrange(50),
                    dn,
                ]
            )
            lines.append(dn + b"," + member + b"\n")
            if rng.random() < 0.05:
                lines.append(lines[rng.randrange(1, len(lines))])
    return b"".join(lines)


@pytest.mark.parametrize("seed", [1, 2])
def test_front_coded_runs_merge_to_the_same_bytes(tmp_path: Path, seed: int) -> None:
    """A link table's runs are front-coded (each key stored as what it does not share with
    the key before it in the run): many runs merged in several passes, or one in memory, the
    outputs are the same bytes, and the spill holds much less than the records' keys."""
    source = tmp_path / "members.csv"
    data = member_export(600, seed)
    source.write_bytes(data)
    results = {}
    for budget in (24 << 10, 768 << 10, 1 << 30):
        out = tmp_path / str(budget)
        out.mkdir()
        results[budget] = (
            prepare_table(TableJob(source=source, spec=MEMBERS, memory_budget=budget), out),
            out,
        )
    passes, passes_out = results[24 << 10]
    spilled, _ = results[768 << 10]
    whole, whole_out = results[1 << 30]
    assert passes.runs >= 8 and passes.merge_passes >= 1
    assert spilled.runs >= 2 and spilled.merge_passes == 0
    assert whole.runs == 0 and whole.spill_bytes == 0
    for budget, (_, out) in results.items():
        for kind in ("sorted", "duplicates", "nullpk"):
            name = f"members.{kind}.csv"
            assert (out / name).read_bytes() == (whole_out / name).read_bytes(), (budget, kind)
    expected = reference_prepare(data, MEMBERS)
    assert isinstance(expected, ReferenceResult)
    assert (passes_out / "members.sorted.csv").read_bytes() == expected.files["sorted"]
    # Stored whole, every row's record would be 8 bytes and its key (each value and a 2-byte
    # end); one merge pass writes each row at most once, and every run but the last (kept in
    # memory) is spilled: about half of them here.
    whole_records = sum(
        8 + sum(len(v) + 2 for v in next(csv.reader([line.decode()])))
        for line in data.splitlines()[1:]
    )
    assert 0 < spilled.spill_bytes < 0.45 * whole_records
