"""Runs are capped at a cache-friendly size whatever the budget, so a table larger than one
run spills and merges even under a budget that would hold it whole. The outputs must not
depend on that: same bytes at every budget, first row per key kept, later ones duplicates."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from prepsync import _cleanse
from prepsync.config import TableSpec, Thresholds
from prepsync.pipeline import EngineFiles, plan_columns, prepare_table
from prepsync.request import TableJob

SPEC = TableSpec("M", ("group", "member", "note"), ("group", "member"), Thresholds())


def member_rows(count: int) -> list[tuple[str, str, str]]:
    rng = random.Random(23)
    groups = [f"CN=GRP-{n:06d},OU=Groups,OU=Sydney,DC=corp,DC=example" for n in range(3000)]
    users = [f"CN=User {n:07d},OU=Users,OU=Lyon,DC=corp,DC=example" for n in range(20000)]
    # Some 900 pairs repeat an earlier one with another note: the first one wins.
    return [(rng.choice(groups), rng.choice(users), f"n{i}") for i in range(count)]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    rows = member_rows(330_000)  # about 48 MB of records: more than one run
    folder = tmp_path_factory.mktemp("export")
    source = folder / "M.csv"
    with open(source, "w", encoding="utf-8") as out:
        out.write("group,member,note\n")
        out.writelines(f'"{g}","{m}",{n}\n' for g, m, n in rows)
    kept: dict[tuple[str, str], str] = {}
    duplicates = []
    for _, (g, m, n) in sorted(enumerate(rows), key=lambda item: (item[1][:2], item[0])):
        if (g, m) in kept:
            duplicates.append(f'"{g}","{m}",{n}\n')
        else:
            kept[(g, m)] = f'"{g}","{m}",{n}\n'
    header = "group,member,note\n"
    return (
        source,
        (header + "".join(kept.values())).encode(),
        (header + "".join(duplicates)).encode(),
    )


# At 16 MiB and 1 GiB the last run is kept in memory and merged after the spilled ones (the
# last input slice: on equal keys it comes last).
@pytest.mark.parametrize("budget", [8 << 20, 16 << 20, 1 << 30])
def test_big_tables_give_the_same_bytes_at_any_budget(
    tmp_path: Path, export: tuple[Path, bytes, bytes], budget: int
) -> None:
    source, sorted_bytes, duplicate_bytes = export
    result = prepare_table(TableJob(source=source, spec=SPEC, memory_budget=budget), tmp_path)
    assert result.runs >= 2  # spilled and merged, even with 1 GiB to spare
    assert result.duplicates > 500
    assert (tmp_path / "M.sorted.csv").read_bytes() == sorted_bytes
    assert (tmp_path / "M.duplicates.csv").read_bytes() == duplicate_bytes


def can_punch_holes(probe: Path) -> bool:
    """Whether fallocate(PUNCH_HOLE | KEEP_SIZE) works in probe's folder (Python has no
    binding for fallocate's flags)."""
    libc = ctypes.CDLL(None, use_errno=True)
    probe.write_bytes(b"x" * (1 << 20))
    try:
        with open(probe, "r+b") as file:
            punch_hole_keep_size = 0x02 | 0x01
            zero, length = ctypes.c_int64(0), ctypes.c_int64(1 << 20)
            return libc.fallocate(file.fileno(), punch_hole_keep_size, zero, length) == 0
    finally:
        probe.unlink()


def merge_half_way(source: Path, folder: Path, half_way: Callable[[Path], None]) -> bytes:
    """The engine alone over `source` at 8 MiB (many runs), calling half_way(spill folder) once
    half the rows have left the final merge; returns the sorted output's rows."""
    spill, outputs = folder / "spill", folder / "out"
    spill.mkdir()
    outputs.mkdir()
    files = {kind: open(outputs / kind, "w+b") for kind in ("sorted", "nullpk", "duplicates")}  # noqa: SIM115
    try:
        with open(source, "rb") as reader:
            job = TableJob(spec=SPEC, source=source, memory_budget=8 << 20)
            engine = _cleanse.Cleanser(
                job,
                plan_columns(SPEC.columns, job),
                EngineFiles(
                    spill_dir=spill,
                    sorted_fd=files["sorted"].fileno(),
                    nullpk_fd=files["nullpk"].fileno(),
                    duplicates_fd=files["duplicates"].fileno(),
                ),
            )
            try:
                while engine.read_from(reader.fileno(), 1 << 20):
                    pass
                engine.finish_input()
                assert not engine.merge_step(engine.stats()["rows_read"] // 2)
                half_way(spill)
                while not engine.merge_step(1 << 20):
                    pass
            finally:
                engine.close()
        files["sorted"].seek(0)
        return files["sorted"].read()
    finally:
        for out in files.values():
            out.close()


def test_the_merge_frees_the_spill_bytes_it_has_read(
    tmp_path: Path, export: tuple[Path, bytes, bytes]
) -> None:
    """Half-way through the final merge, the runs already read half-way no longer hold those
    bytes: their pages went back for the outputs to reuse (DESIGN, "The merge frees the spill
    files as it reads them"). The outputs' writer thread punches the holes the merge queues
    to it, so the last few may still be on their way: the check waits for them (a few
    seconds at most), the merge standing still meanwhile. Where the file system cannot punch
    holes, nothing is freed early and the test has nothing to check."""
    source, sorted_bytes, _ = export
    if not can_punch_holes(tmp_path / "probe"):
        pytest.skip("this file system cannot punch holes")
    held: list[tuple[int, int]] = []

    def measure(spill: Path) -> None:
        runs = [path for path in spill.iterdir() if path.name.startswith("run-")]
        assert len(runs) >= 4
        size = sum(path.stat().st_size for path in runs)
        # Keys are spread evenly over the runs, so half the rows merged is about half of each
        # run read; punched in 1 MiB steps, well over a third of the bytes must be gone.
        deadline = time.monotonic() + 10
        while True:
            blocks = sum(path.stat().st_blocks * 512 for path in runs)
            if blocks < size * 2 // 3 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        held.append((blocks, size))

    assert merge_half_way(source, tmp_path, measure) == sorted_bytes.partition(b"\n")[2]
    [(blocks, size)] = held
    assert blocks < size * 2 // 3, (blocks, size)


@pytest.mark.parametrize("threads", ["started", "refused"])
def test_the_same_bytes_when_no_worker_thread_can_be_started(
    tmp_path: Path,
    export: tuple[Path, bytes, bytes],
    monkeypatch: pytest.MonkeyPatch,
    threads: str,
) -> None:
    """Where no thread can be created (a container's thread limit), the spill worker's and
    the output writer's work runs on the calling thread: the same bytes, nothing left running.
    A debug build refuses every thread under PREPSYNC_DEBUG_NO_THREADS=1 (`make test-asan`
    runs this); half-way through the final merge the output writer's thread is there or not."""
    source, sorted_bytes, _ = export
    if threads == "refused":
        if not _cleanse.DEBUG_BUILD:
            pytest.skip("only a debug build can refuse threads")
        monkeypatch.setenv("PREPSYNC_DEBUG_NO_THREADS", "1")
    running: list[int] = []
    rows = merge_half_way(
        source, tmp_path, lambda _: running.append(_cleanse.live_counters()["threads"])
    )
    assert rows == sorted_bytes.partition(b"\n")[2]
    assert running == ([1] if threads == "started" else [0])


def cached_bytes(path: Path) -> int | None:
    """Bytes of the file in the page cache (util-linux fincore), None where it cannot tell."""
    fincore = shutil.which("fincore")
    if fincore is None:
        return None
    done = subprocess.run(
        [fincore, "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(done.stdout.split()[0]) if done.returncode == 0 and done.stdout.strip() else None


def test_the_export_leaves_the_page_cache_as_it_is_read(
    tmp_path: Path, export: tuple[Path, bytes, bytes]
) -> None:
    """The export is read once: its pages are dropped behind the read position (DESIGN, "The
    export leaves the page cache"), so that the spill runs take them. The outputs stay the
    same bytes and nothing of the engine's is left open."""
    source, sorted_bytes, duplicate_bytes = export
    with open(source, "rb") as f:
        os.fsync(f.fileno())  # written back: dirty pages cannot be dropped, only written
        while f.read(1 << 20):
            pass
    if cached_bytes(source) is None:
        pytest.skip("fincore (util-linux) cannot tell what is cached here")
    assert cached_bytes(source) >= source.stat().st_size  # whole pages
    result = prepare_table(TableJob(source=source, spec=SPEC, memory_budget=8 << 20), tmp_path)
    assert result.runs >= 2
    # The kernel skips pages still held in another core's LRU batch: a few stay behind.
    left = cached_bytes(source)
    assert left is not None and left < source.stat().st_size // 4, left
    assert (tmp_path / "M.sorted.csv").read_bytes() == sorted_bytes
    assert (tmp_path / "M.duplicates.csv").read_bytes() == duplicate_bytes
    assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_the_merge_keeps_the_first_row_per_key_in_any_input_order(
    tmp_path: Path, export: tuple[Path, bytes, bytes], order: str
) -> None:
    """Sorted input: one run wins row after row (the merge's heap keeps its top with two
    comparisons); reversed: the runs take turns. Either way the first row of each key in the
    file is kept and the later ones, in file order, are its duplicates."""
    source, _, _ = export
    header, *rows = source.read_bytes().splitlines(keepends=True)
    pairs = [(row.rsplit(b",", 1)[0], row) for row in rows]
    ordered = sorted(pairs, key=lambda pair: pair[0], reverse=order == "reversed")
    reordered = tmp_path / "in" / "M.csv"
    reordered.parent.mkdir()
    reordered.write_bytes(header + b"".join(row for _, row in ordered))
    kept: dict[bytes, bytes] = {}
    duplicates: list[tuple[bytes, int, bytes]] = []
    for position, (key, row) in enumerate(ordered):
        if key in kept:
            duplicates.append((key, position, row))
        else:
            kept[key] = row
    job = TableJob(source=reordered, spec=SPEC, memory_budget=8 << 20)
    result = prepare_table(job, tmp_path)
    assert result.runs >= 4
    assert (tmp_path / "M.sorted.csv").read_bytes() == header + b"".join(
        kept[key] for key in sorted(kept)
    )
    assert (tmp_path / "M.duplicates.csv").read_bytes() == header + b"".join(
        row for _, _, row in sorted(duplicates)
    )
