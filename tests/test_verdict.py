"""Waiting for the server's verdict on a committed session (prepsync.sync.await_verdict)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest
from serverutil import mock_api

from prepsync.client import ApiClient
from prepsync.errors import ServerError
from prepsync.sync import POLL_FIRST, POLL_MAX, POLL_SHARE, Delivery, NoVerdict, await_verdict

SESSION = "0f8fad5b-d9cb-469f-a165-70867728950e"
BLOCKER = "1f8fad5b-d9cb-469f-a165-70867728950e"


class Clock:
    """A fake clock the fake sleep advances."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def api_answering(states: Iterator[str], extra: dict[str, object] | None = None) -> ApiClient:
    """GET /api/sessions/SESSION answers the next state each time; the list shows our session
    queued behind a blocked one."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == f"/api/sessions/{SESSION}":
            state = next(states)
            return httpx.Response(
                200, json={"id": SESSION, "connector": "AD", "state": state, **(extra or {})}
            )
        if path == "/api/connectors/AD/sessions":
            return httpx.Response(
                200,
                json=[
                    {"id": SESSION, "state": "queued"},
                    {"id": BLOCKER, "state": "blocked", "reason": "MaximumDeletedLines 3 < 5"},
                    {"id": "old", "state": "done"},
                ],
            )
        return httpx.Response(503, json={"error": "down"})

    return mock_api(handle)


def delivery() -> Delivery:
    return Delivery(SESSION, "queued", [], None)


@pytest.mark.parametrize("verdict", ["done", "blocked", "failed", "cancelled"])
def test_polls_until_a_verdict_with_a_growing_pause(verdict: str) -> None:
    states = iter(["queued", "queued", "queued", "processing", "processing", verdict])
    counts = {"tables": {"T": {"inserted": 1, "updated": 0, "deleted": 5}}, "reason": "why"}
    clock, seen = Clock(), []
    result = await_verdict(
        api_answering(states, counts),
        delivery(),
        timeout=60,
        progress=seen.append,
        sleep=clock.sleep,
        clock=lambda: clock.now,
    )
    assert result.state == verdict and result.verdict == verdict
    assert result.reason == "why"
    assert result.server_session is not None
    assert result.server_session["tables"] == counts["tables"]  # passed through as it is
    # A share of the time in the current state (at least the first pause), back to the first
    # pause when the state changes; right after a change (and at the start) it asks again at
    # once, since this server answered at once rather than holding the request (?wait).
    assert clock.sleeps == [POLL_FIRST, POLL_FIRST, POLL_FIRST]
    assert seen[0] == f"session {SESSION}: queued behind blocked session {BLOCKER} (0 s)"
    assert seen[-1].startswith(f"session {SESSION}: processing (")


def test_a_server_holding_the_request_is_not_paused_for_again() -> None:
    """A server that knows ?wait holds each answer until the state changes or the wait ends:
    the agent then sleeps nothing, and asks each time for the pause it would have made."""
    clock = Clock()
    states = iter(["queued"] + ["processing"] * 30 + ["done"])
    waits: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        wait = float(request.url.params.get("wait", "0"))
        waits.append(wait)
        clock.now += wait  # held for the whole wait: no change in that time
        return httpx.Response(200, json={"id": SESSION, "state": next(states)})

    result = await_verdict(
        mock_api(handle), delivery(), timeout=3600, sleep=clock.sleep, clock=lambda: clock.now
    )
    assert result.state == "done" and clock.sleeps == []
    assert waits[0] == 0  # the first look answers at once
    assert waits[1:3] == [POLL_FIRST, POLL_FIRST]
    assert all(later >= earlier for earlier, later in itertools.pairwise(waits[2:]))
    assert max(waits) <= POLL_MAX


def test_pauses_grow_with_the_wait_and_are_capped() -> None:
    clock = Clock()
    states = iter(["processing"] * 200 + ["done"])
    await_verdict(
        api_answering(states), delivery(), timeout=3600, sleep=clock.sleep, clock=lambda: clock.now
    )
    waited, polls_in_first_minute = 0.0, 0
    for pause in clock.sleeps:
        polls_in_first_minute += waited < 60
        # The verdict is seen at most a tenth of the wait late (or the first pause), and a long
        # apply costs one request per POLL_MAX seconds, not more.
        assert pause == pytest.approx(min(max(waited * POLL_SHARE, POLL_FIRST), POLL_MAX))
        waited += pause
    assert clock.sleeps[-3:] == [POLL_MAX] * 3
    assert waited > 600 and polls_in_first_minute < 60


def test_no_verdict_within_the_timeout_names_what_holds_it_back() -> None:
    clock = Clock()
    states = iter(["queued"] * 100)
    with pytest.raises(NoVerdict) as waiting:
        await_verdict(
            api_answering(states), delivery(), timeout=7, sleep=clock.sleep, clock=lambda: clock.now
        )
    message = str(waiting.value)
    assert f"session {SESSION} is still queued behind blocked session {BLOCKER}" in message
    assert "MaximumDeletedLines 3 < 5" in message and "baselines advanced" in message
    assert clock.now == pytest.approx(7)  # the last pause is cut to the timeout


def test_an_unreachable_server_says_the_commit_stands() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "down"})

    with pytest.raises(ServerError) as error:
        await_verdict(mock_api(down), delivery(), timeout=60, sleep=lambda _: None)
    assert f"session {SESSION} is committed (baselines advanced)" in str(error.value)
    assert "503" in str(error.value)
