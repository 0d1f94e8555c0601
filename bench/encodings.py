#!/usr/bin/env python3
"""Time a complete ``prepsync prepare`` of the bench export as UTF-8 and as UTF-16.

The UTF-16 copy is what Windows PowerShell 5.1 writes with ``Export-Csv -Encoding Unicode``:
the same text in UTF-16 LE with a byte-order mark, CRLF kept as generated. Both runs use the
same configuration, budget and options, alternate within every repetition (the starting one
rotates), and each is a fresh process; the median of ``--repeat`` runs is reported, with the
ratio UTF-16 / UTF-8 and a check that both runs wrote the same bytes. Results go to
``bench/results/<date>-<commit>-encodings.json``.

The machine the figures come from may be shared: only figures from one run compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TABLES = ("ADExport_entries.csv", "ADExport_members.csv")
BLOCK = 1 << 20


def transcode(source: Path, target: Path) -> None:
    """UTF-8 to UTF-16 LE with its mark, a block at a time (cut on a character boundary)."""
    with open(source, "rb") as reader, open(target, "wb") as writer:
        writer.write(b"\xff\xfe")
        carry = b""
        while block := reader.read(BLOCK):
            data = carry + block
            cut = len(data)
            while cut > 0 and (data[cut - 1] & 0xC0) == 0x80:
                cut -= 1  # back to the start of the last character: it may be incomplete
            if cut > 0 and data[cut - 1] >= 0xC0:
                cut -= 1
            writer.write(data[:cut].decode("utf-8").encode("utf-16-le"))
            carry = data[cut:]
        writer.write(carry.decode("utf-8").encode("utf-16-le"))


def run_once(
    sources: Path, work: Path, args: argparse.Namespace, pythonpath: str | None = None
) -> dict[str, float]:
    shutil.rmtree(sources / "previous", ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "prepsync", "prepare", "--connector", "AD", "--agent", "bench",
        "--synchronization-mode", "complete", "--config", str(BENCH / "config" / "ad.xml"),
        "--sources-directory", str(sources), "--working-directory", str(work),
        "--memory-budget", args.memory_budget,
    ]  # fmt: skip
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=pythonpath)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"prepare failed: {done.stderr.strip()}")
    return {"wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--data", help="an existing export directory (default: generate one)")
    ap.add_argument("--root", default="/tmp/prepsync-bench-encodings")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory-budget", default="256MiB")
    ap.add_argument(
        "--before",
        help="a built checkout of an earlier prepsync: its UTF-8 run is timed alongside "
        "(is the UTF-8 path any slower?)",
    )
    args = ap.parse_args()

    root = Path(args.root)
    utf8 = Path(args.data) if args.data else root / f"utf8-{args.rows}"
    if not (utf8 / TABLES[0]).is_file():
        gen = [sys.executable, str(BENCH / "gen_ad.py"), "--rows", str(args.rows), "--out"]
        subprocess.run([*gen, str(utf8), "--crlf", "--quiet"], check=True)
    utf16 = root / f"utf16-{utf8.name}"
    utf16.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        if not (utf16 / table).is_file():
            transcode(utf8 / table, utf16 / table)
    sizes = {
        name: sum((folder / table).stat().st_size for table in TABLES)
        for name, folder in (("utf-8", utf8), ("utf-16", utf16))
    }
    runs: list[tuple[str, Path, str | None]] = [("utf-8", utf8, None), ("utf-16", utf16, None)]
    if args.before:
        runs.append(("utf-8-before", utf8, args.before))
    walls: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for repeat in range(args.repeat):
        turn = runs[repeat % len(runs) :] + runs[: repeat % len(runs)]
        for name, folder, pythonpath in turn:
            sample = run_once(folder, root / f"work-{name}", args, pythonpath)
            walls[name].append(sample["wall"])
            print(f"{name}: {sample['wall']:.2f} s", file=sys.stderr, flush=True)
    same = all(
        filecmp.cmp(root / "work-utf-8" / out.name, out, shallow=False)
        for out in sorted((root / "work-utf-16").glob("*.csv"))
    )
    medians = {name: statistics.median(values) for name, values in walls.items()}
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "rows": args.rows,
        "memory_budget": args.memory_budget,
        "bytes": sizes,
        "walls": walls,
        "medians": medians,
        "ratio_utf16_to_utf8": medians["utf-16"] / medians["utf-8"],
        "ratio_utf8_to_before": (
            medians["utf-8"] / medians["utf-8-before"] if args.before else None
        ),
        "before": args.before,
        "same_outputs": same,
    }
    out = BENCH / "results" / f"{dt.date.today()}-{result['commit']}-encodings.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
