"""``GET /``: a small read-only HTML page of connectors, tables and recent sessions.

It needs no token (it shows states, no data and no secret; session ids grant nothing without a
token). Everything from configuration, agents or the store is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape

from prepsync.config import TableSpec
from prepsync.server.control import Session

RECENT_SESSIONS = 20

_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
    "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
)


def _row(cells: Iterable[object], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{escape(str(cell))}</{tag}>" for cell in cells) + "</tr>"


def render_status(
    tables: Mapping[str, Sequence[TableSpec]],
    row_counts: Mapping[tuple[str, str], int],
    sessions: Mapping[str, Sequence[Session]],
) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>prepsync server</title>",
        f"<style>{_STYLE}</style></head><body><h1>prepsync server</h1>",
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
