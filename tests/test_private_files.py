"""Every file the agent and the server write is readable by its owner only (0600), and every
folder they create is 0700, whatever the umask: they hold identity data."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from serverutil import Api, ServerProcess, csv_bytes, write_config
from sites import Site

from prepsync import pipeline, staging
from prepsync.cli import main
from prepsync.config import load_tables
from prepsync.request import PrepareRequest
from prepsync.sync import SessionJournal

PERMISSIVE_UMASKS = [0o002, 0o022, 0o000]


@pytest.fixture(params=PERMISSIVE_UMASKS, ids=lambda mask: f"umask{mask:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes_below(folder: Path) -> dict[str, int]:
    """Each file's and folder's mode under ``folder``; folders' names end with "/"."""
    return {
        str(path.relative_to(folder)) + ("/" if path.is_dir() else ""): mode(path)
        for path in sorted(folder.rglob("*"))
    }


def assert_private(found: dict[str, int]) -> None:
    wrong = {
        name: oct(value)
        for name, value in found.items()
        if value != (0o700 if name.endswith("/") else 0o600)
    }
    assert wrong == {}


def test_agent_outputs_baselines_and_report_are_owner_only(site: Site, umask: int) -> None:
    report = site.root / "run.json"
    for mode_name in ("complete", "incremental"):
        result = CliRunner().invoke(
            main, ["prepare", *site.args(mode_name, "--report", str(report))]
        )
        assert result.exit_code == 0, result.output
    working = modes_below(site.working)
    assert {"Entries.sorted.csv", "Entries.nullpk.csv", "Entries.duplicates.csv"} <= set(working)
    assert "Entries.sorted.delta.csv" in working
    assert_private(working)
    previous = modes_below(site.previous)
    assert {"Entries.sorted.csv", "Entries.sorted.csv.bak", "Entries.rows.json"} <= set(previous)
    assert_private(previous)
    assert mode(report) == 0o600
    # The folders prepsync created: Work, Work/Collect and previous (Temp/ExportOutput is the
    # export's, made by the test).
    assert mode(site.root / "Work") == 0o700
    assert mode(site.working) == 0o700
    assert mode(site.previous) == 0o700


def test_a_report_written_before_with_a_wider_mode_is_narrowed(site: Site, umask: int) -> None:
    report = site.root / "run.json"
    report.write_text("{}")
    report.chmod(0o644)
    result = CliRunner().invoke(main, ["prepare", *site.args("complete", "--report", str(report))])
    assert result.exit_code == 0, result.output
    assert mode(report) == 0o600
    assert json.loads(report.read_text())["mode"] == "complete"


def test_spill_files_and_folders_are_owner_only(tmp_path: Path, umask: int) -> None:
    """Sorted runs spilled to disk, seen while the run reads and writes (a small table's final
    merge can now read every run at once: its first merge step may finish the outputs)."""
    site = Site(tmp_path)
    rows = [(f"{(i * 7919) % 60000:05d}", f"name {i}", "x") for i in range(60000)]
    site.write("Entries.csv", csv_bytes(("id", "name", "ignored"), rows))
    seen: dict[str, int] = {}

    def look(table: str, phase: str, done: int, total: int) -> None:
        if phase in ("read", "write"):
            for spill in site.working.glob(".prepsync-spill-*"):
                seen[spill.name + "/"] = mode(spill)
                seen.update({f"{spill.name}/{k}": v for k, v in modes_below(spill).items()})

    request = PrepareRequest(
        connector="AD",
        mode="complete",
        sources_dir=site.sources,
        working_dir=site.working,
        memory_budget=1 << 20,
        parallel=1,
    )
    pipeline.run_offline(load_tables(site.config, "AD"), request, progress=look)
    spill_files = [name for name in seen if name.count("/") == 2 and not name.endswith("/")]
    assert spill_files, f"nothing spilled: {seen}"
    assert_private(seen)


def test_session_journal_is_owner_only(tmp_path: Path, umask: int) -> None:
    journal = SessionJournal(tmp_path)
    journal.write({"session": None, "connector": "AD", "mode": "complete", "tables": None})
    assert mode(journal.path) == 0o600


def test_a_baseline_copied_across_file_systems_is_owner_only(
    tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "T.sorted.csv"
    source.write_bytes(b"id\n1\n")
    source.chmod(0o600)

    def no_link(*_: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "copy.csv"
    staging.link_or_copy(source, target)
    assert target.read_bytes() == b"id\n1\n"
    assert mode(target) == 0o600


@pytest.fixture
def server_in_open_folder(tmp_path: Path, umask: int) -> Iterator[tuple[ServerProcess, Path]]:
    """A server started under a permissive umask on a data folder that already exists 0755,
    with a store file an older version left 0644."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    (data / "store.sqlite3").touch()
    (data / "store.sqlite3").chmod(0o644)
    server = ServerProcess(write_config(tmp_path), data, tmp_path / "server.log")
    server.start()  # the child inherits the umask
    try:
        yield server, data
    finally:
        server.stop()


def test_server_files_are_owner_only_in_an_open_data_folder(
    server_in_open_folder: tuple[ServerProcess, Path],
) -> None:
    server, data = server_in_open_folder
    with httpx.Client(base_url=server.url, timeout=30) as http:
        api = Api(http)
        complete = {"HR_people.sorted.csv": csv_bytes(("id", "name"), [("1", "Ann")])}
        api.send("HR", "complete", complete)  # writes both databases
        pending = api.open("HR", "incremental")  # its upload stays on disk
        api.upload(pending, "HR_people.sorted.delta.csv", b"command,id,name\ninsert,2,Bob\n")
    found = modes_below(data)
    for name in ("store.sqlite3", "sessions.sqlite3", "store.sqlite3-wal", "sessions.sqlite3-wal"):
        assert name in found, sorted(found)
    assert f"sessions/{pending}/HR_people.sorted.delta.csv" in found
    assert_private(found)
    assert mode(data) == 0o755  # the operator's folder keeps its mode


def test_a_data_folder_the_server_creates_is_owner_only(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "new" / "data"
    server = ServerProcess(write_config(tmp_path), data, tmp_path / "server.log")
    server.start()
    try:
        assert mode(tmp_path / "new") == 0o700
        assert mode(data) == 0o700
        assert_private(modes_below(data))
    finally:
        server.stop()
