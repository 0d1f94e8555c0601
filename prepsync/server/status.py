"""``GET /``: a small read-only HTML page: blocked sessions first (their counts, the thresholds
they crossed and the ``prepsync sessions`` commands to review and settle them), then
connectors, tables and recent sessions.

It needs no token (it shows states, no data and no secret; session ids grant nothing without a
token). Everything from configuration, agents or the store is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from prepsync.config import TableSpec
from prepsync.server.sessions import Session

RECENT_SESSIONS = 20

_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
)


def _row(cells: Iterable[object], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{escape(str(cell))}</{tag}>" for cell in cells) + "</tr>"


def _counts_text(counts: Mapping[str, Any]) -> str:
    text = (
        f"{counts.get('inserted', 0)} inserted, {counts.get('updated', 0)} updated, "
        f"{counts.get('deleted', 0)} deleted"
    )
    for association, links in (counts.get("links") or {}).items():
        text += (
            f"; {association}: {links.get('inserted', 0)} links inserted, "
            f"{links.get('deleted', 0)} deleted"
        )
    return text


def _blocked_section(blocked: Sequence[Session], api_url: str) -> list[str]:
    """Blocked sessions, each with its counts, what it crossed, and how to settle it."""
    if not blocked:
        return []
    parts = [
        f"<h2>Blocked sessions ({len(blocked)})</h2>",
        "<p>Each waits for an operator; later incremental sessions of its connector wait behind "
        "it. Review its changes, then force or cancel it (add <code>--api-client-id</code> and "
        "<code>--api-secret</code> or <code>PREPSYNC_API_SECRET</code>):</p>",
    ]
    target = f" --api-url {api_url}"
    for session in blocked:
        summary = session.summary or {}
        tables: Mapping[str, Any] = summary.get("tables") or {}
        crossed = summary.get("thresholds") or ([session.reason] if session.reason else [])
        parts.append(
            f"<h3>{escape(session.connector)} — {escape(session.mode)} session "
            f"{escape(session.id)} (agent {escape(session.agent)}, opened "
            f"{escape(session.to_json()['opened_at'])})</h3>"
        )
        parts.append("<table>" + _row(("table", "changes"), "th"))
        for name, counts in tables.items():
            parts.append(_row((name, _counts_text(counts))))
        parts.append("</table><p>Thresholds crossed:</p><ul>")
        parts.extend(f"<li>{escape(str(reason))}</li>" for reason in crossed)
        parts.append("</ul><pre>")
        commands = [
            f"prepsync sessions changes {session.id} --table {name}{target}" for name in tables
        ]
        commands.append(f"prepsync sessions force {session.id}{target}")
        commands.append(f"prepsync sessions cancel {session.id}{target}")
        parts.append(escape("\n".join(commands)))
        parts.append("</pre>")
    return parts


def render_status(
    tables: Mapping[str, Sequence[TableSpec]],
    row_counts: Mapping[tuple[str, str], int],
    sessions: Mapping[str, Sequence[Session]],
    blocked: Sequence[Session] = (),
    api_url: str = "URL",
) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>prepsync server</title>",
        f"<style>{_STYLE}</style></head><body><h1>prepsync server</h1>",
        f"<p>Agents and operators reach it with <code>--api-url {escape(api_url)}</code>.</p>",
        *_blocked_section(blocked, api_url),
    ]
    if not tables:
        parts.append("<p>No connector is configured.</p>")
    for connector in sorted(tables):
        parts.append(f"<h2>Connector {escape(connector)}</h2>")
        parts.append("<table>" + _row(("table", "key", "stored rows"), "th"))
        for spec in tables[connector]:
            key = ", ".join(spec.key) if spec.key is not None else "(all columns)"
            parts.append(_row((spec.name, key, row_counts.get((connector, spec.name), 0))))
        parts.append("</table>")
        recent = sessions.get(connector, ())
        if not recent:
            parts.append("<p>No session yet.</p>")
            continue
        parts.append(f"<h3>Last {len(recent)} sessions</h3><table>")
        parts.append(_row(("opened (UTC)", "session", "agent", "mode", "state", "reason"), "th"))
        for session in recent:
            opened = session.to_json()["opened_at"]
            parts.append(
                _row(
                    (
                        opened,
                        session.id,
                        session.agent,
                        session.mode,
                        session.state,
                        session.reason or "",
                    )
                )
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
