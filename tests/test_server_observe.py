"""What an operator sees without asking: the transition log, /healthz, /metrics."""

from __future__ import annotations

import json
import logging
import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serverutil import Api, csv_bytes, write_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from test_server_ops import launched

from prepsync.server import create_app

PEOPLE = "HR_people"
ENTRIES, MEMBERS = "ADExport_entries", "ADExport_members"


def people(*rows: tuple[str, str]) -> bytes:
    return csv_bytes(["id", "name"], rows)


def people_delta(*rows: tuple[str, str, str]) -> bytes:
    return csv_bytes(["command", "id", "name"], rows)


class Transitions(logging.Handler):
    """The records of the transition logger, with their structured fields."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, session_id: str) -> list[dict[str, Any]]:
        return [
            {"message": record.getMessage(), **record.fields}  # type: ignore[attr-defined]
            for record in self.records
            if getattr(record, "fields", {}).get("session") == session_id
        ]


@pytest.fixture
def transitions() -> Iterator[Transitions]:
    logger = logging.getLogger("prepsync.server.events")
    handler = Transitions()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextmanager
def running(tmp_path: Path) -> Iterator[Api]:
    config = tmp_path / "config.xml"
    if not config.exists():
        write_config(tmp_path)
    with TestClient(create_app(config, tmp_path / "data")) as client:
        yield Api(client)


def _hr_day_by_day(api: Api) -> dict[str, str]:
    """A done complete, a failed incremental, a complete again, a blocked incremental
    (cancelled); their ids."""
    ids = {"done": api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": UPLOADS[0]})}
    ids["failed"] = api.send("HR", "incremental", {f"{PEOPLE}.sorted.delta.csv": UPLOADS[1]})
    assert api.state(ids["failed"])["state"] == "failed"
    ids["reload"] = api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": UPLOADS[2]})
    ids["blocked"] = api.send("HR", "incremental", {f"{PEOPLE}.sorted.delta.csv": UPLOADS[3]})
    assert api.state(ids["blocked"])["state"] == "blocked"
    assert api.operator().post(f"/api/sessions/{ids['blocked']}/cancel").status_code == 200
    return ids


BASE = [("1", "ann"), ("2", "bob"), ("3", "cy"), ("4", "di")]
UPLOADS = (
    people(*BASE),
    people_delta(("SSN-123-45-6789", "3", "cy")),  # a command that quotes an uploaded value
    people(*BASE),
    people_delta(("delete", "1", "ann"), ("delete", "2", "bob")),
)


def test_every_transition_is_one_info_line(tmp_path: Path, transitions: Transitions) -> None:
    with running(tmp_path) as api:
        ids = _hr_day_by_day(api)
    done = transitions.events(ids["done"])
    assert [event["event"] for event in done] == ["opened", "committed", "done"]
    committed = done[1]
    assert committed["bytes"] == len(people(*BASE)) and committed["tables"] == 1
    assert f"{len(people(*BASE))} bytes in 1 tables" in committed["message"]
    assert done[2]["tables"][PEOPLE]["inserted"] == 4
    assert done[2]["apply_seconds"] is not None
    assert f"{PEOPLE}: 4 inserted, 0 updated, 0 deleted" in done[2]["message"]

    blocked = transitions.events(ids["blocked"])
    assert [event["event"] for event in blocked] == ["opened", "committed", "blocked", "cancelled"]
    crossed = "entity type mapping HR_Person (table HR_people): MaximumDeletedLines 1 < 2"
    assert blocked[2]["thresholds"][0].startswith(crossed)
    assert crossed in blocked[2]["message"]
    assert (
        blocked[3]["by"] == "client operator"
        and "cancelled by client operator" in blocked[3]["message"]
    )

    failed = transitions.events(ids["failed"])
    assert [event["event"] for event in failed] == ["opened", "committed", "failed"]
    assert "SSN-123-45-6789" in failed[2]["reason"]  # the log is the operator's: it says why
    assert all(record.levelno == logging.INFO for record in transitions.records)


def test_a_complete_session_logs_the_sessions_it_cancels(
    tmp_path: Path, transitions: Transitions
) -> None:
    with running(tmp_path) as api:
        left_open = api.open("HR", "incremental")
        superseding = api.open("HR", "complete")
    (cancelled,) = transitions.events(left_open)[1:]
    assert (
        cancelled["event"] == "cancelled" and cancelled["by"] == f"complete session {superseding}"
    )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics(tmp_path: Path) -> None:
    with running(tmp_path) as api:
        ids = _hr_day_by_day(api)
        api.open("AD", "complete")
        answer = api.http.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=")
        samples = _samples(answer.text)
    assert samples[("prepsync_sessions", (("connector", "HR"), ("state", "done")))] == 2
    assert samples[("prepsync_sessions", (("connector", "HR"), ("state", "failed")))] == 1
    assert samples[("prepsync_sessions", (("connector", "HR"), ("state", "cancelled")))] == 1
    assert samples[("prepsync_sessions", (("connector", "AD"), ("state", "open")))] == 1
    assert samples[("prepsync_queue_depth", (("connector", "HR"),))] == 0
    assert samples[("prepsync_threshold_blocks_total", (("connector", "HR"),))] == 1
    uploaded = sum(map(len, UPLOADS))
    assert samples[("prepsync_received_bytes_total", ())] == uploaded
    done = (("connector", "HR"), ("mode", "complete"), ("state", "done"))
    assert samples[("prepsync_apply_seconds_count", done)] == 2
    assert ids


def test_session_metrics_come_from_the_database_not_the_process(tmp_path: Path) -> None:
    """Another process (here: the next one on the same data) reports the same states."""
    with running(tmp_path) as api:
        api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": people(*BASE)})
        api.open("HR", "incremental")
    with running(tmp_path) as api:
        samples = _samples(api.http.get("/metrics").text)
    assert samples[("prepsync_sessions", (("connector", "HR"), ("state", "done")))] == 1
    assert samples[("prepsync_sessions", (("connector", "HR"), ("state", "open")))] == 1
    assert samples[("prepsync_received_bytes_total", ())] == 0  # this process received none


def test_healthz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running(tmp_path) as api:
        answer = api.http.get("/healthz")
        assert answer.status_code == 200
        assert answer.json() == {
            "status": "ok",
            "backend": "sqlite",
            "worker": "running",
            "sessions": "ok",
            "store": "ok",
        }
        state = api.http.app.state.prepsync  # type: ignore[attr-defined]

        def unreachable() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(state.backend, "table_counts", unreachable)
        answer = api.http.get("/healthz")
        assert answer.status_code == 503
        assert answer.json()["store"] == "OperationalError: disk I/O error"
        assert answer.json()["status"] == "unavailable"


def test_json_log_lines_from_a_real_server(tmp_path: Path) -> None:
    with (
        launched(tmp_path, "--log-format", "json") as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        api = Api(http)
        session_id = api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": people(*BASE)})
        assert api.state(session_id)["state"] == "done"
        assert http.get("/healthz").status_code == 200
    lines = server.log.read_text().splitlines()
    documents = [json.loads(line) for line in lines]  # every line, uvicorn's too
    assert {"time", "level", "logger", "message"} <= set(documents[0])
    events = [d["event"] for d in documents if d.get("session") == session_id and "event" in d]
    assert events == ["opened", "committed", "done"]
    assert any(d["logger"] == "uvicorn.access" for d in documents)
