"""Every --separator end to end: the agent's files go up in its separator, the store holds rows.

Regression: with ``--separator ';'`` the server read the files as ``,``-separated, failed every
session, and the agent still advanced its baselines: the store stayed empty for good.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverutil import TABLES, Agent, Export, ServerProcess, config_xml, latest_session


def write_export(export: Export, sources: Path, separator: str) -> None:
    """The export in ``separator``, values holding it (and commas) quoted as CSV requires."""

    def lines(header: list[str], rows: list[list[str]]) -> str:
        stream = io.StringIO()
        writer = csv.writer(stream, delimiter=separator, lineterminator="\n")
        writer.writerows([header, *rows])
        return stream.getvalue()

    entries = [[guid, dn + separator + "x", mail] for guid, dn, mail in export.entries.values()]
    (sources / "ADExport_entries.csv").write_text(lines(["objectGUID", "dn", "mail"], entries))
    members = [list(pair) for pair in sorted(export.members)]
    (sources / "ADExport_members.csv").write_text(lines(["dn", "member"], members))


def rows(data: bytes, separator: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8")), delimiter=separator))


@pytest.fixture
def server(tmp_path: Path, store_url: str | None) -> Iterator[ServerProcess]:
    """The server on each store: PostgreSQL's COPY takes the session's separator too."""
    config = tmp_path / "server.xml"
    config.write_text(config_xml())
    running = ServerProcess.in_folder(tmp_path, config, database=store_url)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.slow
def test_semicolon_and_tab_online_complete_then_incremental(
    server: ServerProcess, tmp_path: Path
) -> None:
    for index, (separator, option) in enumerate([(";", ";"), ("\t", "tab")]):
        agent = Agent(tmp_path / f"agent{index}", server)
        export = Export(seed=5 + index, size=60)
        for mode in ("complete", "incremental"):
            if mode == "incremental":
                export.next_day()
            write_export(export, agent.sources, separator)
            run = agent.run(mode, "--separator", option)
            assert run.returncode == 0, run.stderr
            session = latest_session(server)
            assert server.wait(session, ("done", "failed", "blocked")) == "done", server.sessions()[
                0
            ]
            for table in TABLES:
                exported = rows(agent.sorted_file(table), separator)
                stored = rows(server.resources(table), ",")
                assert stored == exported, (separator, mode, table)
                assert len(stored) > 1


def test_session_separator_is_checked_and_used_for_its_files(
    tmp_path: Path, store_url: str | None
) -> None:
    from serverutil import csv_bytes
    from test_server_app import PEOPLE, running

    with running(tmp_path, store_url) as api:
        path = "/api/connectors/HR/sessions"
        for bad in ('"', "\n", "\x00", ";;", "", 5, "é"):
            answer = api.post(path, json={"agent": "a", "mode": "complete", "separator": bad})
            assert answer.status_code == 400 and "separator" in answer.text, bad
        answer = api.post(path, json={"agent": "a", "mode": "complete", "separator": "|"})
        assert answer.status_code == 201
        session = answer.json()["id"]
        name = f"{PEOPLE}.sorted.csv"
        data = b'id|name\n1|"a|b"\n2|c,d\n'
        api.upload(session, name, data)
        assert api.commit(session, {name: data}).status_code == 202
        assert api.wait(session)["state"] == "done"
        assert api.resources("HR", PEOPLE) == csv_bytes(
            ["id", "name"], [("1", "a|b"), ("2", "c,d")]
        )
