"""Several `prepsync serve` processes on one PostgreSQL database and one data directory."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
import pytest
from serverutil import Api, ServerProcess, csv_bytes, write_config

pytestmark = pytest.mark.postgres

ENTRIES = "ADExport_entries"
MEMBERS = "ADExport_members"


def entries(rows: list[tuple[str, str]]) -> bytes:
    return csv_bytes(["objectGUID", "dn"], rows)


def test_a_second_process_takes_over_the_queue_of_a_killed_one(
    tmp_path: Path, postgres_url: str
) -> None:
    config = write_config(tmp_path)
    data = tmp_path / "data"
    first = ServerProcess(config, data, tmp_path / "first.log", database=postgres_url)
    second = ServerProcess(config, data, tmp_path / "second.log", database=postgres_url)
    first.start()
    # Held by the test: the first process's apply does its work, then waits at its commit (the
    # applied mark), so the kill lands inside its transaction, whatever the machine's speed.
    gate = psycopg.connect(postgres_url)
    gate.execute("LOCK TABLE prepsync.applied IN ACCESS EXCLUSIVE MODE")
    try:
        with httpx.Client(base_url=first.url, timeout=30) as first_http:
            api = Api(first_http)
            rows = [(f"{n:08d}", f"cn=user {n},ou=people") for n in range(2_000)]
            full = {
                f"{ENTRIES}.sorted.csv": entries(rows),
                f"{MEMBERS}.sorted.csv": csv_bytes(["dn", "member"], []),
            }
            complete = api.send("AD", "complete", full, wait=False)
            state = api.wait(complete, frozenset({"processing", "done"}), timeout=30)["state"]
            assert state == "processing"  # the first process's worker applies it
            second.start()
            with httpx.Client(base_url=second.url, timeout=30) as second_http:
                other = Api(second_http)
                other._token = api.token()  # one data directory: one token key for both
                # Sent to the second process while the first applies the complete session:
                # they wait behind it.
                deltas = []
                for number in range(3):
                    delta = {
                        f"{ENTRIES}.sorted.delta.csv": csv_bytes(
                            ["command", "objectGUID", "dn"], [("insert", f"z{number}", "new")]
                        )
                    }
                    deltas.append(other.send("AD", "incremental", delta, wait=False))
                assert [other.state(delta)["state"] for delta in deltas] == ["queued"] * 3
                first.kill()  # mid-apply: its transaction and its claim die with it
                gate.rollback()
                assert other.wait(complete, timeout=60)["state"] == "done"
                for session_id in deltas:
                    assert other.wait(session_id, timeout=30)["state"] == "done"
                # Applied in opening order: a delta applied before the complete load would
                # have been replaced by it.
                expected = rows + [(f"z{number}", "new") for number in range(3)]
                assert other.resources("AD", ENTRIES) == entries(expected)
                assert other.state(complete)["tables"][ENTRIES]["rows"] == len(rows)
    finally:
        gate.close()
        first.stop()
        second.stop()


def test_a_process_with_another_data_directory_is_refused(
    tmp_path: Path, postgres_url: str
) -> None:
    config = write_config(tmp_path)
    first = ServerProcess(config, tmp_path / "data", tmp_path / "first.log", database=postgres_url)
    first.start()
    first.stop()
    stray = ServerProcess(
        config, tmp_path / "elsewhere", tmp_path / "stray.log", database=postgres_url
    )
    with pytest.raises(AssertionError, match="must share one data directory"):
        stray.start()
    assert stray.process is not None and stray.process.wait(10) == 1
    assert "Traceback" not in stray.log.read_text()
