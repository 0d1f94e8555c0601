"""Three seeded days of the soak (``python -m tests.soak`` runs as many as asked): the soak's
own machinery - kills, reruns, the store checked against the model - keeps working."""

from __future__ import annotations

import csv
import io

import chaos
import pytest
import soak


def test_three_days_of_soak_end_clean() -> None:
    report = soak.run_soak(3, seed=5, rows=300, log=False)
    assert report.days == 3 and report.runs >= 3
    assert report.kills >= 1, "the seed was chosen to kill something"
    assert report.clean, report.text()


def test_every_bad_export_kind_is_spoiled() -> None:
    good = b"objectGUID,dn,extra,mail\r\nguid-1,CN=a,x,a@x\r\n"
    for kind in soak.BAD_INPUTS:
        assert soak.bad_export(good, kind, ",") != good, kind


def test_the_store_comparison_counts_lost_extra_and_doubled_rows() -> None:
    """The yardstick itself: rows missing, changed, resurrected or stored twice are counted."""
    expected = [("g1", "CN=a", "a@x"), ("g2", "CN=b, two", "b@x"), ("g3", "CN=c", "")]
    stored = chaos.csv_text(
        ["objectGUID", "dn", "mail"],
        [
            ("g1", "CN=a", "a@x"),
            ("g2", "CN=b, two", "OLD"),
            ("g4", "CN=d", "d@x"),
            ("g4", "CN=d", "d@x"),
        ],
    ).encode()
    result = chaos.compare(chaos.ENTRIES, expected, stored)
    # g2 stale and g3 missing are lost; g2's old value and g4 twice are extra; g4 is doubled.
    assert (result.lost, result.extra, result.doubled) == (2, 3, 1)
    exact = chaos.csv_text(["objectGUID", "dn", "mail"], expected).encode()
    assert chaos.compare(chaos.ENTRIES, expected, exact).equal


def test_a_change_export_applied_to_yesterday_gives_today() -> None:
    """The change-file yardstick: replaying the day's change file on yesterday's rows, by
    the rules of a change file (last change of a key wins, a null key is set aside), gives
    the model's rows of today."""
    model = chaos.Model.create(seed=9, size=60)
    for _ in range(8):
        before = model.snapshot()
        model.next_day()
        exports = model.change_exports(before, ";")
        entries = {guid: (guid, dn, mail) for guid, (_, dn, mail) in before[0].items()}
        _header, rows = _parse(exports[chaos.ENTRIES], ";")
        last: dict[str, list[str]] = {}
        for command, guid, dn, _extra, mail in rows:
            if guid:
                last[guid] = [command.lower(), guid, dn, mail]
        for command, guid, dn, mail in last.values():
            if command == "delete":
                del entries[guid]
            else:  # an insert is of a new key, an update of a known one; merge is either
                assert command != "insert" or guid not in entries, guid
                assert command != "update" or guid in entries, guid
                entries[guid] = (guid, dn, mail)
        assert entries == model.entries
        members = set(before[1])
        _header, pairs = _parse(exports[chaos.MEMBERS], ";")
        for command, dn, member in pairs:
            (members.add if command == "insert" else members.discard)((dn, member))
        assert members == model.members


def _parse(data: bytes, separator: str) -> tuple[list[str], list[list[str]]]:
    table = list(csv.reader(io.StringIO(data.decode(), newline=""), delimiter=separator))
    return table[0], table[1:]


def test_change_file_days_killed_after_the_commit_are_delivered_once() -> None:
    """Kills of the agent right after the server accepted a change file's commit, then the
    scheduler's rerun on the same export: the store equals the model and no export went in
    two sessions (a second delivery is counted, and fails the soak)."""
    report = soak.run_soak(
        4,
        seed=11,
        rows=300,
        log=False,
        change_files=1.0,
        disk_full=False,
        plan="agent-after-commit",  # the agent's crash point just after the commit's answer
    )
    assert report.change_file_days == 3
    assert report.agent_kills_after_commit_on_change_files == 3, report.text()
    assert report.clean and report.doubled_deliveries == 0, report.text()


def test_days_with_a_full_server_disk_end_clean() -> None:
    """The server's data directory fills during the run and is freed: the agent waits, or
    gives up in one line saying the server's disk is full and its rerun completes."""
    report = soak.run_soak(5, seed=4, rows=300, log=False, change_files=0.0, plan="disk-full")
    if report.disk_full != "on":
        pytest.skip(f"no disk to fill: {report.disk_full}")
    assert report.disk_fulls == 4, report.text()
    assert report.clean, report.text()


def test_days_with_clock_jumps_end_clean() -> None:
    report = soak.run_soak(5, seed=6, rows=300, log=False, disk_full=False, plan="clock-jump")
    assert report.clock_jumps == 4, report.text()
    assert report.clean, report.text()
