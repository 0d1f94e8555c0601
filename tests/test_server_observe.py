"""What an operator sees without asking: the transition log, /healthz, /metrics."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serverutil import (
    HR_SECRET,
    OPERATOR,
    OPERATOR_SECRET,
    Agent,
    Api,
    Export,
    ServerProcess,
    config_xml,
    csv_bytes,
    running,
)
from sites import Site
from test_server_ops import launched

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


def test_every_transition_is_one_info_line(
    tmp_path: Path, store_url: str | None, transitions: Transitions
) -> None:
    with running(tmp_path, store_url) as api:
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


def test_metrics(tmp_path: Path, store_url: str | None) -> None:
    with running(tmp_path, store_url) as api:
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


def test_session_metrics_come_from_the_database_not_the_process(
    tmp_path: Path, store_url: str | None
) -> None:
    """Another process (here: the next one on the same data) reports the same states."""
    with running(tmp_path, store_url) as api:
        api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": people(*BASE)})
        api.open("HR", "incremental")
    with running(tmp_path, store_url) as api:
        samples = _samples(api.http.get("/metrics").text)
    assert samples[("prepsync_sessions", (("connector", "HR"), ("state", "done")))] == 1
    assert samples[("prepsync_sessions", (("connector", "HR"), ("state", "open")))] == 1
    assert samples[("prepsync_received_bytes_total", ())] == 0  # this process received none


def test_healthz(tmp_path: Path, store_url: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    with running(tmp_path, store_url) as api:
        answer = api.http.get("/healthz")
        assert answer.status_code == 200
        assert answer.json() == {
            "status": "ok",
            "backend": "postgresql" if store_url else "sqlite",
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
    listening = f"listening on http://127.0.0.1:{server.port} (store: sqlite)"
    assert any(d["message"] == listening for d in documents)


# ------------------------------------------------------------------ the status page
SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


def _page(api: Api, **headers: str) -> str:
    answer = api.http.get("/", headers=headers)
    assert answer.status_code == 200
    for name, value in SECURITY.items():
        assert answer.headers[name] == value
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src" not in policy and "unsafe" not in policy
    return answer.text


def test_the_anonymous_page_shows_states_and_counts_never_values(
    tmp_path: Path, store_url: str | None
) -> None:
    with running(tmp_path, store_url) as api:
        ids = _hr_day_by_day(api)
        # The failed session is older than the last done one: it needs nobody any more.
        page = _page(api)
        assert "Needs attention" not in page and ids["failed"] in page
        assert "SSN-123-45-6789" not in page
        bad_again = api.send("HR", "incremental", {f"{PEOPLE}.sorted.delta.csv": UPLOADS[1]})
        page = _page(api)
    assert "SSN-123-45-6789" not in page
    attention = page[page.index("Needs attention (1)") : page.index("Connector HR")]
    assert bad_again in attention
    assert "What to do next" in attention and "--synchronization-mode complete" in attention
    command = (
        f"prepsync sessions show {bad_again} --api-url http://testserver --api-client-id operator"
    )
    assert command in attention
    assert "<meta http-equiv='refresh'" in page


def test_an_operators_token_shows_the_reasons(tmp_path: Path, store_url: str | None) -> None:
    with running(tmp_path, store_url) as api:
        ids = _hr_day_by_day(api)
        assert "SSN-123-45-6789" not in _page(api)  # no token
        hr_only = Api(api.http, "hr-only", HR_SECRET)
        assert "SSN-123-45-6789" not in _page(api, **hr_only.auth)  # not an operator's
        assert "SSN-123-45-6789" not in _page(api, **api.auth)  # the agent's: not either
        assert "SSN-123-45-6789" not in _page(api, Authorization="Bearer forged")
        page = _page(api, **api.operator().auth)
    row = page[page.index(ids["failed"]) :]
    assert "SSN-123-45-6789" in row[: row.index("</tr>")]


def _basic(client: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client}:{secret}".encode()).decode()


def test_a_browser_signs_in_as_an_operator_to_see_the_reasons(
    tmp_path: Path, store_url: str | None
) -> None:
    with running(tmp_path, store_url) as api:
        ids = _hr_day_by_day(api)
        anonymous = _page(api)
        assert "SSN-123-45-6789" not in anonymous and "href='?operator'" in anonymous
        # Asking to sign in without credentials: the browser is asked for them (Basic).
        asked = api.http.get("/?operator")
        assert asked.status_code == 401 and "SSN-123-45-6789" not in asked.text
        assert asked.headers["www-authenticate"].startswith('Basic realm="prepsync operators"')
        assert "default-src 'none'" in asked.headers["content-security-policy"]
        # Wrong secret, unknown client, a client that is no operator: asked again, no reason.
        for client, secret in (
            (OPERATOR, "wrong"),
            ("nobody", OPERATOR_SECRET),
            ("hr-only", HR_SECRET),
        ):
            refused = api.http.get("/?operator", headers={"Authorization": _basic(client, secret)})
            assert refused.status_code == 401 and "SSN-123-45-6789" not in refused.text
            assert "SSN-123-45-6789" not in _page(api, Authorization=_basic(client, secret))
        page = _page(api, Authorization=_basic(OPERATOR, OPERATOR_SECRET))
        assert "Signed in as an operator" in page
        signed_in = api.http.get(
            "/?operator", headers={"Authorization": _basic(OPERATOR, OPERATOR_SECRET)}
        )
        assert signed_in.status_code == 200 and signed_in.text.count("SSN-123-45-6789") == 1
    row = page[page.index(ids["failed"]) :]
    assert "SSN-123-45-6789" in row[: row.index("</tr>")]


def test_forced_changes_and_what_a_queued_session_waits_for(
    tmp_path: Path, store_url: str | None
) -> None:
    with running(tmp_path, store_url) as api:
        api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": UPLOADS[0]})
        forced = api.send("HR", "incremental", {f"{PEOPLE}.sorted.delta.csv": UPLOADS[3]})
        assert api.operator().post(f"/api/sessions/{forced}/force").status_code == 202
        assert api.wait(forced)["state"] == "done"
        uploading = api.open("HR", "incremental")
        # The same agent through another client: committed, it waits for the open one.
        hr_only = Api(api.http, "hr-only", HR_SECRET)
        later = hr_only.send(
            "HR",
            "incremental",
            {f"{PEOPLE}.sorted.delta.csv": people_delta(("update", "3", "cyd"))},
            wait=False,
        )
        page = _page(api)
    connector = page[page.index("Connector HR") :]
    forced_row = connector[connector.index(forced) :]
    forced_row = forced_row[: forced_row.index("</tr>")]
    assert "done (forced)" in forced_row and "0 inserted, 0 updated, 2 deleted" in forced_row
    queue = page[page.index("Queue (2)") : page.index("Connector AD")]
    assert "its agent&#x27;s uploads and commit" in queue
    later_row = queue[queue.index(later) :]
    later_row = later_row[: later_row.index("</tr>")]
    assert f"the earlier incremental session {uploading} of HR (open)" in later_row


def test_a_first_load_blocked_by_the_connectors_defaults_says_how_to_proceed(
    tmp_path: Path,
) -> None:
    config = tmp_path / "server.xml"
    # A <Connector> element with Identity Manager's defaults: 100 inserted resources at most.
    config.write_text(
        config_xml().replace(
            "<EntityTypeMapping", '<Connector Identifier="AD" />\n  <EntityTypeMapping', 1
        )
    )
    server = ServerProcess.in_folder(tmp_path, config)
    server.start()
    try:
        agent, export = Agent(tmp_path / "agent", server), Export(seed=3, size=150)
        export.write(agent.sources)
        blocked = agent.run("complete")
        assert blocked.returncode == 3, blocked.stderr
        advice = (
            "the store holds nothing of connector AD yet: a first load with "
            "--synchronization-mode initial ignores thresholds, as Identity Manager does; or "
            'raise MaximumInsertedLines on <Connector Identifier="AD">'
        )
        verdict = [line for line in blocked.stderr.splitlines() if " blocked: " in line]
        assert len(verdict) == 1 and verdict[0].endswith(f"({advice})")
        page = httpx.get(server.url + "/", timeout=10).text
        assert escape(advice) in page
        assert agent.run("initial").returncode == 0
        agent.assert_store_matches_export()
    finally:
        server.stop()


def test_prepare_writes_json_log_lines(site: Site) -> None:
    code, _, text_err = site.run("complete", "--log-level", "debug")
    assert code == 0 and "Entries: 4 rows read" in text_err
    code, _, err = site.run("complete", "--log-level", "debug", "--log-format", "json")
    assert code == 0
    documents = [json.loads(line) for line in err.splitlines()]
    assert any("Entries: 4 rows read" in d["message"] for d in documents)
    assert {d["logger"] for d in documents} <= {"prepsync"} and documents[0]["level"] == "DEBUG"


def test_sessions_settled_at_start_are_logged(tmp_path: Path, transitions: Transitions) -> None:
    with running(tmp_path) as api:
        applied = api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": UPLOADS[0]})
    # As after a crash: one session applied whose state was not recorded, one cut short.
    with sqlite3.connect(tmp_path / "data" / "sessions.sqlite3") as connection:
        connection.execute("UPDATE sessions SET state = 'processing' WHERE id = ?", (applied,))
    with running(tmp_path) as api:
        assert api.wait(applied)["state"] == "done"
    (recovered,) = [e for e in transitions.events(applied) if e["event"] == "recovered"]
    assert recovered["state"] == "done" and "applied before the restart" in recovered["message"]


def test_a_session_applied_before_a_crash_keeps_its_counts(tmp_path: Path) -> None:
    with running(tmp_path) as api:
        applied = api.send("HR", "complete", {f"{PEOPLE}.sorted.csv": UPLOADS[0]})
        counted = api.wait(applied)["tables"]
    assert counted, "a done session shows its per-table counts"
    # The crash window: the store committed the rows and the applied mark, the sessions
    # database had not yet recorded the outcome (state still processing, no summary).
    with sqlite3.connect(tmp_path / "data" / "sessions.sqlite3") as connection:
        connection.execute(
            "UPDATE sessions SET state = 'processing', summary = NULL WHERE id = ?", (applied,)
        )
    with running(tmp_path) as api:
        recovered = api.wait(applied)
    assert recovered["state"] == "done" and recovered["tables"] == counted
