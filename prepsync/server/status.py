"""``GET /``: a read-only HTML page for whoever runs the server; it refreshes itself.

In this order: the sessions that need someone (blocked ones, and failed ones since their
connector's last successful session), each with what to do next and the complete
``prepsync sessions`` commands to do it; the sessions in the queue and what each waits for;
then per connector its tables and its recent sessions (forced ones marked, the changes each
made).

It needs no token, so it shows **states and counts, never uploaded values**: a failure's reason
can quote a value from an export (an invalid command, a key), so reasons are shown only to a
request that speaks for an operator (a bearer token, or a browser signed in at ``/?operator``
with an operator client's id and secret); anyone else reads what to do next, and the command
that shows the reason to an operator. Threshold texts are the server's own (limits and counts).
Everything shown is HTML-escaped, and the page is sent with a Content-Security-Policy that
allows nothing but its own style (see :data:`SECURITY_HEADERS`).
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from prepsync.config import TableSpec
from prepsync.protocol import BLOCKED, DONE, FAILED, FULL_MODES, OPEN, PROCESSING, QUEUED
from prepsync.server.defaults import DEFAULT_SESSION_TIMEOUT
from prepsync.server.events import changes_text, tables_changes_text
from prepsync.server.sessions import Session

RECENT_SESSIONS = 20
REFRESH_SECONDS = 30

_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}"
    "pre{background:#f4f4f4;padding:.5em;overflow-x:auto}.attention{color:#a00}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

# Sent with every HTML answer: no script, frame, form, plugin or foreign resource; the one
# inline style is allowed by its hash.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class StatusView:
    """What the page shows, read by the endpoint."""

    tables: Mapping[str, Sequence[TableSpec]]
    row_counts: Mapping[tuple[str, str], int]
    recent: Mapping[str, Sequence[Session]]  # connector -> newest first
    unfinished: Sequence[Session]  # every connector, opening order
    api_url: str
    # The client id the commands name: the viewer's when it is an operator, else one the
    # configuration names as operator; None: the commands name the session's own client.
    operator_client: str | None = None
    show_reasons: bool = False  # the viewer is an operator: reasons may quote values
    session_timeout: float = DEFAULT_SESSION_TIMEOUT


def _row(cells: Iterable[object], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{escape(str(cell))}</{tag}>" for cell in cells) + "</tr>"


def _changes(session: Session) -> str:
    tables: Mapping[str, Any] = (session.summary or {}).get("tables") or {}
    if not tables:
        return ""
    return tables_changes_text(tables)


def _opened(session: Session) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(session.opened_at))


def _state(session: Session) -> str:
    return f"{session.state} (forced)" if session.forced else session.state


class _Page:
    def __init__(self, view: StatusView) -> None:
        self.view = view

    def command(self, session: Session, verb: str, *extra: str) -> str:
        client = self.view.operator_client or session.client or "CLIENT_ID"
        words = [
            "prepsync",
            "sessions",
            verb,
            session.id,
            *extra,
            "--api-url",
            self.view.api_url,
            "--api-client-id",
            client,
        ]
        return " ".join(shlex.quote(word) for word in words)

    def commands(self, lines: Sequence[str]) -> str:
        return "<pre>" + escape("\n".join(lines)) + "</pre>"

    # ------------------------------------------------------------------------ attention
    def attention(self) -> list[str]:
        blocked = [s for s in self.view.unfinished if s.state == BLOCKED]
        failed = [
            session
            for connector in sorted(self.view.recent)
            for session in _failed_since_last_done(self.view.recent[connector])
        ]
        if not blocked and not failed:
            return ["<p>No session needs attention.</p>"]
        parts = [
            f"<h2 class='attention'>Needs attention ({len(blocked) + len(failed)})</h2>",
            "<p>The commands below need the operator client's secret in "
            "<code>PREPSYNC_API_SECRET</code>.</p>",
        ]
        for session in blocked:
            parts.extend(self.blocked(session))
        for session in failed:
            parts.extend(self.failed(session))
        return parts

    def _heading(self, session: Session) -> str:
        return (
            f"<h3>{escape(session.connector)}: {escape(session.mode)} session "
            f"{escape(session.id)}: {escape(_state(session))} (agent "
            f"{escape(session.agent)}, opened {escape(_opened(session))} UTC)</h3>"
        )

    def blocked(self, session: Session) -> list[str]:
        summary = session.summary or {}
        tables: Mapping[str, Any] = summary.get("tables") or {}
        crossed = summary.get("thresholds") or []
        parts = [
            self._heading(session),
            "<p>It crossed a threshold and changes nothing until an operator forces or cancels "
            "it; later incremental sessions of its connector wait behind it.</p>",
            "<table>" + _row(("table", "changes it would make"), "th"),
        ]
        parts.extend(_row((name, changes_text(counts))) for name, counts in tables.items())
        parts.append("</table><p>Thresholds crossed:</p><ul>")
        parts.extend(f"<li>{escape(str(reason))}</li>" for reason in crossed)
        parts.append("</ul>")
        advice = summary.get("advice")
        if advice:
            parts.append(f"<p><strong>How to proceed:</strong> {escape(str(advice))}.</p>")
        parts.append(
            "<p>Review its changes, then apply it anyway or reject it (a rejected incremental "
            "session's changes are lost: the connector's next synchronization must then be "
            "complete):</p>"
        )
        lines = [self.command(session, "show")]
        lines.extend(self.command(session, "changes", "--table", name) for name in tables)
        lines.append(self.command(session, "force"))
        lines.append(self.command(session, "cancel"))
        parts.append(self.commands(lines))
        return parts

    def failed(self, session: Session) -> list[str]:
        parts = [self._heading(session)]
        if self.view.show_reasons:
            parts.append(f"<p>Reason: {escape(session.reason or 'none given')}</p>")
        else:
            parts.append(
                "<p>Its reason can quote exported values, so it is shown to operators only: "
                "the first command below, or this page <a href='?operator'>signed in as an "
                "operator</a>.</p>"
            )
        if session.mode in FULL_MODES:
            next_step = escape(
                "The store still holds what it held before. Fix the cause, then run the "
                f"agent's {session.mode} synchronization of {session.connector} again."
            )
        else:
            next_step = (
                escape(
                    "Its changes are not in the store, and the agent has moved on from them, so "
                    f"every later incremental session of {session.connector} fails too. Fix the "
                    "cause, then run the agent once with "
                )
                + "<code>--synchronization-mode complete</code>."
            )
        parts.append(f"<p><strong>What to do next:</strong> {next_step}</p>")
        parts.append(self.commands([self.command(session, "show")]))
        return parts

    # ------------------------------------------------------------------------ queue
    def queue(self) -> list[str]:
        waiting = [s for s in self.view.unfinished if s.state != BLOCKED]
        if not waiting:
            return ["<p>The queue is empty.</p>"]
        processing = [s for s in self.view.unfinished if s.state == PROCESSING]
        heads: dict[str, Session] = {}
        for session in self.view.unfinished:
            heads.setdefault(session.connector, session)
        parts = [
            f"<h2>Queue ({len(waiting)})</h2><table>",
            _row(("opened (UTC)", "connector", "session", "agent", "mode", "state", "waits for"),
                 "th"),
        ]  # fmt: skip
        for session in waiting:
            head = heads[session.connector]
            parts.append(
                _row(
                    (
                        _opened(session),
                        session.connector,
                        session.id,
                        session.agent,
                        session.mode,
                        _state(session),
                        self.waits_for(session, head, processing),
                    )
                )
            )
        parts.append("</table>")
        return parts

    def waits_for(self, session: Session, head: Session, processing: Sequence[Session]) -> str:
        if session.state == OPEN:
            idle = max(0.0, time.time() - session.active_at)
            return (
                f"its agent's uploads and commit (last activity {idle:.0f} s ago; abandoned "
                f"after {self.view.session_timeout:g} s without any)"
            )
        if session.state == PROCESSING:
            return "nothing: being applied now"
        if head.id != session.id:
            until = {
                OPEN: "it is committed, cancelled or abandoned",
                BLOCKED: "an operator forces or cancels it",
                QUEUED: "it is applied",
                PROCESSING: "it is applied",
            }.get(head.state, "it is settled")
            return (
                f"the earlier {head.mode} session {head.id} of {head.connector} ({head.state}), "
                f"until {until}: each connector's sessions are applied in opening order"
            )
        busy = [other for other in processing if other.connector != session.connector]
        if busy:
            return f"the worker, applying session {busy[0].id} of {busy[0].connector}"
        return "nothing: next to be applied"

    # ------------------------------------------------------------------------ connectors
    def connector(self, connector: str) -> list[str]:
        parts = [f"<h2>Connector {escape(connector)}</h2><table>"]
        parts.append(_row(("table", "key", "stored rows"), "th"))
        for spec in self.view.tables[connector]:
            key = ", ".join(spec.key) if spec.key is not None else "(all columns)"
            parts.append(
                _row((spec.name, key, self.view.row_counts.get((connector, spec.name), 0)))
            )
        parts.append("</table>")
        recent = self.view.recent.get(connector, ())
        if not recent:
            parts.append("<p>No session yet.</p>")
            return parts
        header = ["opened (UTC)", "session", "agent", "mode", "state", "changes", "apply s"]
        if self.view.show_reasons:
            header.append("reason")
        parts.append(f"<h3>Last {len(recent)} sessions</h3><table>" + _row(header, "th"))
        for session in recent:
            seconds = (session.summary or {}).get("apply_seconds")
            cells: list[object] = [
                _opened(session),
                session.id,
                session.agent,
                session.mode,
                _state(session),
                _changes(session),
                "" if seconds is None else seconds,
            ]
            if self.view.show_reasons:
                cells.append(session.reason or "")
            parts.append(_row(cells))
        parts.append("</table>")
        return parts


def _failed_since_last_done(recent: Sequence[Session]) -> list[Session]:
    """The connector's failed sessions newer than its last done one (newest first): the ones
    whose consequence still stands."""
    failed: list[Session] = []
    for session in recent:
        if session.state == DONE:
            break
        if session.state == FAILED:
            failed.append(session)
    return failed


def render_status(view: StatusView) -> str:
    page = _Page(view)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>",
        f"<title>prepsync server</title><style>{_STYLE}</style></head><body>",
        "<h1>prepsync server</h1>",
        f"<p>Agents and operators reach it with <code>--api-url {escape(view.api_url)}</code>. "
        f"This page refreshes every {REFRESH_SECONDS} s (shown "
        f"{escape(time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime()))} UTC). "
        + (
            "Signed in as an operator: failure reasons are shown.</p>"
            if view.show_reasons
            else "Failure reasons are shown to operators: <a href='?operator'>sign in</a>.</p>"
        ),
        *page.attention(),
        *page.queue(),
    ]
    if not view.tables:
        parts.append("<p>No connector is configured.</p>")
    for connector in sorted(view.tables):
        parts.extend(page.connector(connector))
    parts.append("</body></html>")
    return "".join(parts)
