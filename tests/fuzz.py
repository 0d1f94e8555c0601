"""Fuzz target for the CSV tokenizer and the configuration reader, through `prepsync prepare`.

Every input is a valid export or configuration, mutated: bytes flipped, inserted, deleted,
repeated or spliced, quotes and line ends scrambled, byte-order marks and ``#TYPE`` lines put
in front, XML declarations (DTDs, entities) slipped into the configuration. Each one is run
offline, in process, at a small memory budget, in complete or incremental mode, and must end:

- with exit status 0, the new baselines equal to the sorted outputs; or
- with exit status 1 and exactly one line ``error: …`` on stderr, the baselines untouched;

and in both cases no traceback and no temporary or spill file left behind.

    python -m tests.fuzz --seconds 3600 [--seed S]    # seeded mutator; or, when atheris is
    python -m tests.fuzz --seconds 3600 --atheris     # installed (pip install -e '.[fuzz]')

A failing case is written to ``--crashes`` (default ``fuzz-crashes/``) as a directory that
``prepsync prepare`` can be rerun on.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__:  # run as `python -m tests.fuzz`: the helpers are siblings, not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from click.testing import CliRunner
from serverutil import prepare_argv

from prepsync.cli import main

TABLE, LINKS = "Entries", "Links"

CONFIG = b"""<?xml version="1.0" encoding="utf-8"?>
<ConfigurationFile xmlns="urn:fuzz">
  <EntityTypeMapping Identifier="Entry" Connector="F" ConnectionTable="Entries">
    <Property Identifier="id" ConnectionColumn="id" IsPrimaryKey="true" />
    <Property Identifier="name" ConnectionColumn="name" />
    <Property Identifier="mail" ConnectionColumn="Mail" />
    <Property Identifier="manager" />
  </EntityTypeMapping>
  <EntityAssociationMapping Identifier="Link" Connector="F" ConnectionTable="Links"
      Column1="group" Column2="member" />
</ConfigurationFile>
"""

EXPORTS = [
    b'id,name,extra,mail\n3,"Doe, Jane",x,j@x\n1,Ann,y,\n2,"say ""hi""",z,b@x\n'
    b",none,w,n@x\n1,dup,v,d@x\n",
    b'\xef\xbb\xbfid,name,mail\r\n10,"two\r\nlines",a\r\n9,Zo\xc3\xab,b\r\n100,\xe6\x97\xa5,c\r\n',
    b"id,name,mail\n",
    b"command,id,name,mail\ninsert,1,a,b\nupdate,2,c,d\ndelete,3,,\nmerge,1,e,f\nADD,4,g,h\n",
    b'id,name,mail,,dup,dup\n"1","",x,,1,2\n"",b,y,,3,4\n',
]
LINK_EXPORTS = [b"group,member\ng1,u2\ng1,u1\ng1,u2\n", b"member,group\n,g\nu,\n"]
BASELINE = {TABLE: b"id,name,mail\n1,Ann,\n2,Bob,b@x\n", LINKS: b"group,member\ng1,u1\n"}

_TOKENS = [
    b",", b";", b"\t", b'"', b'""', b"\r", b"\n", b"\r\n", b"\x00", b"\xff", b"\xc3", b"\xe6\x97",
    b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xff\xfe\x00\x00", b"#TYPE System.Object\n",
    b"command", b"insert", b"delete", b"id", b"ID", b" ", b"\\",
]  # fmt: skip
_XML_TOKENS = [
    b'<!DOCTYPE c [<!ENTITY e "x">]>', b'<!DOCTYPE c SYSTEM "http://127.0.0.1:1/x.dtd">',
    b"&e;", b'IsPrimaryKey="true"', b'IsPrimaryKey="false"', b'ConnectionTable="Entries.CSV"',
    b'ConnectionTable=""', b'ConnectionColumn="id"', b"<Property Identifier=\"p\" />", b"<", b">",
    b"&", b'"', b"\x00", b"\xff", b"</ConfigurationFile>", b'Connector="F"', b"Column1=\"group\"",
]  # fmt: skip


def mutate(data: bytes, rng: random.Random, tokens: list[bytes], others: list[bytes]) -> bytes:
    """One to three random edits of ``data``; lengths stay in the tens of kilobytes."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        at = rng.randint(0, len(data))
        end = min(len(data), at + rng.randint(0, 16))
        kind = rng.randrange(9)
        if kind == 0 and data:  # flip a byte
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
        elif kind in (1, 2):  # insert a token that means something to the reader
            data = data[:at] + rng.choice(tokens) + data[at:]
        elif kind == 3:  # delete a run
            data = data[:at] + data[end:]
        elif kind == 4:  # repeat a run
            data = data[:end] + data[at:end] * rng.randint(1, 40) + data[end:]
        elif kind == 5:  # truncate
            data = data[:at]
        elif kind == 6:  # splice in a piece of another seed
            other = rng.choice(others)
            start = rng.randint(0, len(other))
            data = data[:at] + other[start : start + rng.randint(1, 64)] + data[at:]
        elif kind == 7:  # swap line ends
            data = data.replace(*rng.choice([(b"\n", b"\r"), (b"\r\n", b"\n"), (b"\n", b"\r\n")]))
        else:  # a long field
            data = data[:at] + bytes([rng.choice(b'ax,"')]) * rng.randint(100, 20000) + data[at:]
        data = data[: 64 << 10]
    return data


@dataclass
class Case:
    config: bytes
    exports: dict[str, bytes]
    mode: str = "complete"
    separator: str = ","
    budget: str = "1MiB"
    notes: list[str] = field(default_factory=list)


def random_case(rng: random.Random) -> Case:
    """A valid setup with the export or (one time in four) the configuration mutated."""
    case = Case(
        config=CONFIG,
        exports={TABLE: rng.choice(EXPORTS), LINKS: rng.choice(LINK_EXPORTS)},
        mode=rng.choice(["complete", "incremental", "initial"]),
        budget=rng.choice(["1MiB", "2MiB", "16MiB"]),
    )
    if rng.random() < 0.25:
        case.config = mutate(CONFIG, rng, _XML_TOKENS, [CONFIG])
    else:
        table = rng.choice([TABLE, TABLE, LINKS])
        case.exports[table] = mutate(case.exports[table], rng, _TOKENS, EXPORTS + LINK_EXPORTS)
    if rng.random() < 0.1:
        case.separator = ";"
        case.exports = {t: d.replace(b",", b";") for t, d in case.exports.items()}
    return case


class Violation(AssertionError):
    pass


def leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if ".tmp-" in p.name or p.name.startswith(".prepsync-spill-")
    )


def run_case(case: Case, root: Path) -> str:
    """Run one case in the empty folder ``root``; returns "ok" or "refused", or raises
    Violation naming the broken promise."""
    sources, working = root / "src", root / "work"
    previous = sources / "previous"
    previous.mkdir(parents=True)
    for table, data in BASELINE.items():
        (previous / f"{table}.sorted.csv").write_bytes(data)
    for table, data in case.exports.items():
        (sources / f"{table}.csv").write_bytes(data)
    config = root / "conf.xml"
    config.write_bytes(case.config)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    arguments = prepare_argv(
        "F",
        case.mode,
        "--separator",
        case.separator,
        "--memory-budget",
        case.budget,
        "--parallel",
        "1",
        "--log-level",
        "Error",
        "--report",
        str(root / "report.json"),
        agent="fuzz",
        config=config,
        sources=sources,
        working=working,
    )
    result = CliRunner().invoke(main, arguments)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise Violation(f"uncaught {type(result.exception).__name__}: {result.exception}")
    stray = leftovers(root)
    if stray:
        raise Violation(f"left behind: {stray}")
    after = {p.name: p.read_bytes() for p in previous.iterdir() if p.is_file()}
    if result.exit_code == 1:
        stderr = result.stderr
        if not stderr.startswith("error: ") or stderr.count("\n") != 1 or "Traceback" in stderr:
            raise Violation(f"not one clean error line: {stderr!r}")
        if after != before:
            raise Violation("a failed run moved the baselines")
        return "refused"
    if result.exit_code != 0:
        raise Violation(f"exit status {result.exit_code}: {result.stderr!r}")
    for table in json.loads((root / "report.json").read_text())["tables"]:
        name = table["table"]
        if table["rows_read"] != table["kept"] + table["null_keys"] + table["duplicates"]:
            raise Violation(f"{name}: rows read != kept + null keys + duplicates: {table}")
        baseline = after.get(f"{name}.sorted.csv")
        if case.mode == "incremental" and table["change_file"]:
            if baseline != before.get(f"{name}.sorted.csv"):
                raise Violation(f"a change file moved the baseline of {name}")
        elif baseline != (working / f"{name}.sorted.csv").read_bytes():
            raise Violation(f"baseline of {name} differs from its sorted output")
    return "ok"


def save(case: Case, folder: Path, problem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix="case-", dir=folder))
    (target / "conf.xml").write_bytes(case.config)
    for table, data in case.exports.items():
        (target / f"{table}.csv").write_bytes(data)
    (target / "README").write_text(
        f"mode={case.mode} separator={case.separator!r} budget={case.budget}\n{problem}\n"
    )
    return target


def fuzz(
    seed: int,
    *,
    cases: int | None = None,
    seconds: float | None = None,
    crashes: Path | None = None,
) -> dict[str, int]:
    """Run random cases until ``cases`` ran or ``seconds`` passed; raises on the first
    violation (after saving the case under ``crashes``)."""
    rng = random.Random(seed)
    counts = {"ok": 0, "refused": 0}
    deadline = time.monotonic() + seconds if seconds is not None else None
    with tempfile.TemporaryDirectory(prefix="prepsync-fuzz-") as scratch:
        number = 0
        while (cases is None or number < cases) and (
            deadline is None or time.monotonic() < deadline
        ):
            case = random_case(rng)
            root = Path(scratch) / str(number)
            root.mkdir()
            try:
                counts[run_case(case, root)] += 1
            except Violation as violation:
                where = save(case, crashes, str(violation)) if crashes else None
                raise Violation(f"case {number} of seed {seed}: {violation} ({where})") from None
            shutil.rmtree(root)
            number += 1
    return counts


def atheris_main(seconds: float, crashes: Path) -> None:
    """libFuzzer drives the bytes (coverage-guided over prepsync's Python code); the first
    byte picks what they replace: the Entries export, the Links export or the config."""
    import atheris

    atheris.instrument_all()  # prepsync is imported already: instrument what is loaded

    scratch = Path(tempfile.mkdtemp(prefix="prepsync-atheris-"))
    counter = [0]

    def one_input(data: bytes) -> None:
        if not data:
            return
        target, body = data[0] % 4, data[1:]
        case = Case(config=CONFIG, exports={TABLE: EXPORTS[0], LINKS: LINK_EXPORTS[0]})
        case.mode = ("complete", "incremental")[data[0] // 4 % 2]
        if target == 3:
            case.config = body
        else:
            case.exports[LINKS if target == 2 else TABLE] = body
        counter[0] += 1
        root = scratch / str(counter[0])
        root.mkdir()
        try:
            run_case(case, root)
        except Violation as violation:
            save(case, crashes, str(violation))
            raise
        finally:
            shutil.rmtree(root, ignore_errors=True)

    corpus = scratch / "corpus"
    corpus.mkdir()
    for number, seed in enumerate(EXPORTS):
        (corpus / f"export{number}").write_bytes(bytes([number % 2 * 4]) + seed)
    (corpus / "config").write_bytes(b"\x03" + CONFIG)
    try:
        atheris.Setup(
            [sys.argv[0], f"-max_total_time={int(seconds)}", "-max_len=65536", str(corpus)],
            one_input,
        )
        atheris.Fuzz()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main_cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="mutator seed")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided (libFuzzer)")
    parser.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"))
    options = parser.parse_args(argv)
    if options.atheris:
        atheris_main(options.seconds, options.crashes)
        return 0
    started = time.monotonic()
    report: Callable[[str], None] = lambda text: print(text, flush=True)  # noqa: E731
    report(f"seeded mutator, seed {options.seed}, {options.seconds:g} s")
    try:
        counts = fuzz(options.seed, seconds=options.seconds, crashes=options.crashes)
    except Violation as violation:
        report(f"FAILED: {violation}")
        return 1
    total = sum(counts.values())
    report(
        f"{total} inputs in {time.monotonic() - started:.0f} s: {counts['ok']} accepted, "
        f"{counts['refused']} refused with one clean line; no traceback, no leftover file, "
        "no baseline moved by a failed run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
