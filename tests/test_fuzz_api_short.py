"""A short seeded run of the API fuzz target (``python -m tests.fuzz_api`` runs it for as long
as asked): odd bodies, query parameters, path parameters and headers sent to a real server
must each get a 2xx or a 4xx with a JSON error, and the server must log no traceback."""

from __future__ import annotations

from pathlib import Path

import fuzz_api
import httpx
import pytest


def test_odd_requests_get_no_5xx_and_leave_no_traceback(tmp_path: Path) -> None:
    tally = fuzz_api.run(2026, requests=120, root=tmp_path)
    assert tally.server_errors == 0
    # Both kinds of answer must be reached, or the run proves little about either.
    refused = sum(n for status, n in tally.statuses.items() if 400 <= status < 500)
    accepted = sum(n for status, n in tally.statuses.items() if 200 <= status < 300)
    assert refused >= 50 and accepted >= 10, tally.text()
    assert {400, 401, 404} <= set(tally.statuses), tally.text()


def test_a_broken_promise_is_caught(tmp_path: Path) -> None:
    """The checker itself: a 5xx, a 4xx without a JSON reason and a logged traceback."""
    with pytest.raises(fuzz_api.Violation, match="500"):
        fuzz_api.check_answer("GET /", httpx.Response(500, json={"error": "internal"}))
    with pytest.raises(fuzz_api.Violation, match="not JSON"):
        fuzz_api.check_answer("GET /", httpx.Response(400, text="bad"))
    with pytest.raises(fuzz_api.Violation, match="no error string"):
        fuzz_api.check_answer("GET /", httpx.Response(404, json={"detail": "x"}))
    fuzz_api.check_answer("GET /", httpx.Response(409, json={"error": "conflict"}))
    log = tmp_path / "server.log"
    log.write_text("INFO ok\nERROR Exception in ASGI application\nTraceback (most recent call)\n")
    with pytest.raises(fuzz_api.Violation, match="traceback"):
        fuzz_api.check_log(log)
