"""SPEC §5: the whole process stays under budget + 48 MiB, whatever the input's size.

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
    wrapper = textwrap.dedent(
        f"""
        import resource, subprocess, sys
        code = subprocess.run({command!r}).returncode
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
        sys.exit(code)
        """
    )
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])
    table = json.loads(report.read_text())["tables"][0]
    assert table["runs"] >= 10, "the export must not fit the budget"
    assert peak < BUDGET + SLACK, f"peak RSS {peak / MIB:.1f} MiB"
    assert table["kept"] + table["duplicates"] + table["null_keys"] == table["rows_read"]
