"""SIGKILL at any moment of an incremental run, then a rerun: no change lost or doubled.

Outputs and baselines are each committed through a journal, so after a kill the baselines are
either all old (the run did not commit: the rerun must produce exactly the clean run's delta)
or all new (it did: its delta is in place and the rerun finds nothing more to send).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sites import entity_config, prepare_command

from prepsync import staging

TABLES = ("alpha", "beta", "gamma")
CONFIG = entity_config("C", {t: ("id", "v") for t in TABLES})
ROWS = 60000


def export(day: int, table: str) -> bytes:
    rng = random.Random(f"{table}-{day}")
    lines = ["id,v"]
    for i in range(ROWS):
        if day and rng.random() < 0.02:
            continue  # deleted
        value = f"{i}-{table}" + ("-changed" if day and rng.random() < 0.03 else "")
        lines.append(f"{(i * 7919) % (ROWS * 3):07d},{value}")
    if day:
        lines += [f"{ROWS * 3 + i:07d},new-{table}" for i in range(500)]
    body = lines[1:]
    rng.shuffle(body)
    return ("\n".join([lines[0], *body]) + "\n").encode()


def command(root: Path, mode: str) -> list[str]:
    return prepare_command(
        root / "conf.xml",
        root / "Temp" / "ExportOutput",
        root / "Work" / "Collect",
        "--memory-budget",
        "1MiB",
        "--log-level",
        "Error",
        mode=mode,
    )


def files(folder: Path, suffix: str) -> dict[str, bytes]:
    return {t: (folder / f"{t}{suffix}").read_bytes() for t in TABLES}


@pytest.fixture(scope="module")
def day_one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site after a clean complete run on day 0, with day 1's export in place."""
    root = tmp_path_factory.mktemp("site")
    sources = root / "Temp" / "ExportOutput"
    sources.mkdir(parents=True)
    (root / "conf.xml").write_text(CONFIG)
    for table in TABLES:
        (sources / f"{table}.csv").write_bytes(export(0, table))
    subprocess.run(command(root, "complete"), check=True)
    for table in TABLES:
        (sources / f"{table}.csv").write_bytes(export(1, table))
    return root


@pytest.fixture(scope="module")
def clean(day_one: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("clean")
    shutil.copytree(day_one, root, dirs_exist_ok=True)
    started = time.monotonic()
    subprocess.run(command(root, "incremental"), check=True)
    return {
        "seconds": time.monotonic() - started,
        "delta": files(root / "Work" / "Collect", ".sorted.delta.csv"),
        "baseline": files(root / "Temp" / "ExportOutput" / "previous", ".sorted.csv"),
        "old": files(day_one / "Temp" / "ExportOutput" / "previous", ".sorted.csv"),
    }


def check_recovery(root: Path, clean: dict[str, object]) -> str:
    """After a kill: recover, classify, rerun, and check the outcome; returns the class."""
    collect = root / "Work" / "Collect"
    previous = root / "Temp" / "ExportOutput" / "previous"
    staging.recover(collect)
    baselines = files(previous, ".sorted.csv")
    assert baselines in (clean["old"], clean["baseline"]), "baselines of mixed generations"
    committed = baselines == clean["baseline"]
    if committed:
        assert files(collect, ".sorted.delta.csv") == clean["delta"]
    subprocess.run(command(root, "incremental"), check=True)
    assert files(previous, ".sorted.csv") == clean["baseline"]
    delta = files(collect, ".sorted.delta.csv")
    if committed:
        assert delta == {t: b"command,id,v\n" for t in TABLES}
    else:
        assert delta == clean["delta"]
    leftovers = [
        p.name
        for p in (*collect.iterdir(), *previous.iterdir())
        if ".tmp-" in p.name or p.name.startswith(".prepsync-spill-")
    ]
    assert leftovers == []
    return "committed" if committed else "not committed"


# Outputs: 3 tables x 4 files = 12 renames, then one rename per baseline.
CRASH_POINTS = [
    "staged",
    "committed:1",
    "renamed:1",
    "renamed:7",
    "renamed:12",
    "baselines-staged",
    "committed:2",
    "renamed:13",
    "renamed:14",
]


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_at_each_commit_step(
    point: str, day_one: Path, clean: dict[str, object], tmp_path: Path
) -> None:
    root = tmp_path / "site"
    shutil.copytree(day_one, root)
    env = {**os.environ, "PREPSYNC_CRASH_AT": point}
    done = subprocess.run(command(root, "incremental"), env=env)
    assert done.returncode == -signal.SIGKILL
    outcome = check_recovery(root, clean)
    expected = (
        "not committed"
        if point
        in ("staged", "committed:1", "renamed:1", "renamed:7", "renamed:12", "baselines-staged")
        else "committed"
    )
    assert outcome == expected


@pytest.mark.slow
def test_sigkill_at_random_moments(day_one: Path, clean: dict[str, object], tmp_path: Path) -> None:
    rng = random.Random(2026)
    for attempt in range(6):
        root = tmp_path / f"site{attempt}"
        shutil.copytree(day_one, root)
        process = subprocess.Popen(command(root, "incremental"))
        time.sleep(rng.uniform(0.05, float(clean["seconds"])))  # type: ignore[arg-type]
        process.send_signal(signal.SIGKILL)
        process.wait()
        check_recovery(root, clean)
