"""REFERENCE §5: the whole process stays under budget + 48 MiB, whatever the input's size.

Measured from outside: a wrapper process runs `prepsync prepare` and reads the child's peak
resident set from getrusage(RUSAGE_CHILDREN), which covers everything the process mapped,
Python included.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sites import entity_config, prepare_command

from prepsync import _cleanse

MIB = 1 << 20
BUDGET = 16 * MIB
SLACK = 48 * MIB


def run_measured(command: list[str]) -> tuple[int, int, str]:
    """(exit status, peak RSS in bytes, stderr) of `command` run as a child of a wrapper."""
    wrapper = textwrap.dedent(
        f"""
        import resource, subprocess, sys
        done = subprocess.run({command!r}, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(done.stderr)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
        sys.exit(done.returncode)
        """
    )
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    return done.returncode, int(done.stdout.split()[-1]), done.stderr


def prepare_measured(tmp_path: Path, data_writer: object, *extra: str) -> tuple[int, int, str]:
    """Run an offline complete prepare of table `t` (columns id, name) at a 16 MiB budget over
    the file `data_writer(path)` writes; returns what run_measured does."""
    sources = tmp_path / "src"
    sources.mkdir()
    assert callable(data_writer)
    data_writer(sources / "t.csv")
    (tmp_path / "conf.xml").write_text(entity_config("C", {"t": ("id", "name")}))
    command = prepare_command(
        tmp_path / "conf.xml",
        sources,
        tmp_path / "out",
        "--memory-budget",
        "16MiB",
        "--log-level",
        "Warning",
        *extra,
    )
    return run_measured(command)


def write_export(path: Path, size: int) -> None:
    """About `size` bytes of AD-like rows in random key order, quoted fields included."""
    rng = random.Random(5)
    notes = ['"Badge, floor 2"', "", '"says ""hi"""', "plain text", '"two\nlines"']
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("id,dn,unmapped,mail,note\n")
        written = 0
        while written < size:
            chunk = []
            for _ in range(10000):
                key = rng.getrandbits(64)
                chunk.append(
                    f'{key:016x},"CN=User {key % 99991}\\, Jean,OU=Users,DC=corp,DC=example",'
                    f"{'x' * (key % 40)},user{key % 77777}@corp.example,{notes[key % 5]}\n"
                )
            block = "".join(chunk)
            out.write(block)
            written += len(block)


@pytest.mark.slow
@pytest.mark.skipif(_cleanse.DEBUG_BUILD, reason="sanitizer shadow memory inflates RSS")
def test_peak_rss_stays_under_budget_plus_48_mib(tmp_path: Path) -> None:
    sources = tmp_path / "src"
    sources.mkdir()
    write_export(sources / "entries.csv", 10 * BUDGET + 8 * MIB)
    (tmp_path / "conf.xml").write_text(
        entity_config("AD", {"entries": ("id", "dn", "mail", "note")})
    )
    report = tmp_path / "report.json"
    command = prepare_command(
        tmp_path / "conf.xml",
        sources,
        tmp_path / "out",
        "--memory-budget",
        "16MiB",
        "--report",
        str(report),
        "--log-level",
        "Warning",
        connector="AD",
    )
    code, peak, stderr = run_measured(command)
    assert code == 0, stderr
    table = json.loads(report.read_text())["tables"][0]
    assert table["runs"] >= 10, "the export must not fit the budget"
    assert peak < BUDGET + SLACK, f"peak RSS {peak / MIB:.1f} MiB"
    assert table["kept"] + table["duplicates"] + table["null_keys"] == table["rows_read"]


def write_wide_header(path: Path, columns: int) -> None:
    """A header of `columns` names (id and name among them) and two short rows."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("id,name," + ",".join(f"c{i}" for i in range(columns - 2)) + "\n")
        for row in ("2,b", "1,a"):
            out.write(row + "," * (columns - 2) + "\n")


def write_huge_row(path: Path, size: int) -> None:
    """A few ordinary rows around one row whose `name` is `size` bytes (a base64 photo, say)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("id,name\n1,a\n2,")
        left = size
        while left:
            out.write("Q" * min(left, MIB))
            left -= min(left, MIB)
        out.write("\n3,c\n")


@pytest.mark.skipif(_cleanse.DEBUG_BUILD, reason="sanitizer shadow memory inflates RSS")
@pytest.mark.parametrize("columns", [1_000_000, 3_000_000])
def test_a_header_too_wide_for_the_budget_is_refused_within_it(
    tmp_path: Path, columns: int
) -> None:
    code, peak, stderr = prepare_measured(tmp_path, lambda p: write_wide_header(p, columns))
    assert code == 1
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "t.csv, line 1 (byte 0): header " in stderr and "16 MiB memory budget" in stderr
    assert peak < BUDGET + SLACK, f"peak RSS {peak / MIB:.1f} MiB"
    assert not (tmp_path / "out" / "t.sorted.csv").exists()


@pytest.mark.skipif(_cleanse.DEBUG_BUILD, reason="sanitizer shadow memory inflates RSS")
def test_a_wide_header_that_fits_is_cleansed_within_the_budget(tmp_path: Path) -> None:
    code, peak, stderr = prepare_measured(tmp_path, lambda p: write_wide_header(p, 30_000))
    assert code == 0, stderr
    assert (tmp_path / "out" / "t.sorted.csv").read_bytes() == b"id,name\n1,a\n2,b\n"
    assert peak < BUDGET + SLACK, f"peak RSS {peak / MIB:.1f} MiB"


@pytest.mark.skipif(_cleanse.DEBUG_BUILD, reason="sanitizer shadow memory inflates RSS")
def test_a_row_too_large_for_the_budget_is_refused_within_it(tmp_path: Path) -> None:
    code, peak, stderr = prepare_measured(tmp_path, lambda p: write_huge_row(p, 100 * MIB))
    assert code == 1
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "t.csv, line 3 (byte 12): row too large for the 16 MiB memory budget" in stderr
    assert peak < BUDGET + SLACK, f"peak RSS {peak / MIB:.1f} MiB"
    assert not (tmp_path / "out" / "t.sorted.csv").exists()


@pytest.mark.skipif(_cleanse.DEBUG_BUILD, reason="sanitizer shadow memory inflates RSS")
def test_the_largest_row_the_budget_allows_is_cleansed_within_it(tmp_path: Path) -> None:
    """budget/16 = 1 MiB a row at 16 MiB: a row just under it goes through sort and output."""
    code, peak, stderr = prepare_measured(tmp_path, lambda p: write_huge_row(p, MIB - 64 * 1024))
    assert code == 0, stderr
    sorted_rows = (tmp_path / "out" / "t.sorted.csv").read_bytes().split(b"\n")
    assert [len(row) for row in sorted_rows] == [7, 3, 2 + MIB - 64 * 1024, 3, 0]
    assert peak < BUDGET + SLACK, f"peak RSS {peak / MIB:.1f} MiB"


def test_no_budget_takes_a_row_over_64_mib(tmp_path: Path) -> None:
    """The server reads rows of up to 64 MiB: a row the agent took but the server refused would
    fail the session after the upload. (The big budget's arena is never touched here.)"""
    from prepsync.config import TableSpec, Thresholds
    from prepsync.errors import InputError
    from prepsync.pipeline import prepare_table
    from prepsync.request import TableJob

    source = tmp_path / "t.csv"
    write_huge_row(source, 65 * MIB)
    spec = TableSpec(name="t", columns=("id", "name"), key=("id",), thresholds=Thresholds())
    with pytest.raises(InputError) as caught:
        prepare_table(TableJob(source=source, spec=spec, memory_budget=4 << 30), tmp_path)
    assert caught.value.problem == (
        "row too large for the 4 GiB memory budget: the longest allowed is 64 MiB (the most "
        "prepsync takes); unterminated quote?"
    )


def to_utf16(path: Path) -> None:
    """Rewrite the UTF-8 file at `path` as UTF-16 LE with its mark, a block at a time."""
    utf16 = path.with_suffix(".utf16")
    with open(path, encoding="utf-8", newline="") as reader, open(utf16, "wb") as writer:
        writer.write(b"\xff\xfe")
        while block := reader.read(MIB):
            writer.write(block.encode("utf-16-le"))
    utf16.replace(path)


@pytest.mark.slow
@pytest.mark.skipif(_cleanse.DEBUG_BUILD, reason="sanitizer shadow memory inflates RSS")
def test_a_utf16_export_is_transcoded_within_the_budget(tmp_path: Path) -> None:
    """Twice the bytes of the UTF-8 export, read through the decoder's own buffer: the bound
    holds all the same."""
    sources = tmp_path / "src"
    sources.mkdir()
    write_export(sources / "entries.csv", 6 * BUDGET)
    to_utf16(sources / "entries.csv")
    (tmp_path / "conf.xml").write_text(entity_config("AD", {"entries": ("id", "dn", "note")}))
    command = prepare_command(
        tmp_path / "conf.xml", sources, tmp_path / "out", "--memory-budget", "16MiB",
        "--log-level", "Warning", connector="AD",
    )  # fmt: skip
    code, peak, stderr = run_measured(command)
    assert code == 0, stderr
    assert peak < BUDGET + SLACK, f"peak RSS {peak / MIB:.1f} MiB"


@pytest.mark.skipif(_cleanse.DEBUG_BUILD, reason="sanitizer shadow memory inflates RSS")
def test_a_utf16_row_too_large_is_refused_within_the_budget(tmp_path: Path) -> None:
    def writer(path: Path) -> None:
        write_huge_row(path, 40 * MIB)
        to_utf16(path)

    code, peak, stderr = prepare_measured(tmp_path, writer)
    assert code == 1
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    # The row's first byte in the file: line 3 starts at text byte 12, UTF-16 byte 2 + 2 * 12.
    assert "t.csv, line 3 (byte 26): row too large for the 16 MiB memory budget" in stderr
    assert peak < BUDGET + SLACK, f"peak RSS {peak / MIB:.1f} MiB"
