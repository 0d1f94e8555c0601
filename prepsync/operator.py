"""What ``prepsync sessions`` shows an operator: a connector's sessions as a table, one session
in detail, and a session's changes as one CSV however many pages the server sends.

Sessions are shown as the server describes them (``GET /api/sessions/{id}``): the fields
rendered here are the documented ones, and per-table counts are shown whatever numbers the
server gives for each table, so a server that counts more shows more.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from prepsync.protocol import BLOCKED

if TYPE_CHECKING:
    from prepsync.client import ApiClient

# Rows per request when printing every change: bounds the memory of one answer.
CHANGES_PAGE = 10_000
_COUNT_ORDER = ("inserted", "updated", "deleted", "rows")


def age(timestamp: object, now: float) -> str:
    """``2026-11-28T13:00:00Z`` -> ``5m``, ``3h``, ``2d`` (``?`` when unreadable)."""
    if not isinstance(timestamp, str):
        return "?"
    try:
        then = calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "?"
    seconds = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _tables(session: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    tables = session.get("tables")
    if not isinstance(tables, dict):
        return {}
    return {str(name): counts for name, counts in tables.items() if isinstance(counts, dict)}


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def counts_text(session: Mapping[str, Any]) -> str:
    """A session's changes summed over its tables: ``+inserted ~updated -deleted`` (and the
    links, when the server counts them); ``-`` before it is processed."""
    tables = _tables(session)
    if not tables:
        return "-"
    totals = dict.fromkeys(("inserted", "updated", "deleted"), 0)
    links = dict.fromkeys(("inserted", "deleted"), 0)
    for counts in tables.values():
        for name in totals:
            totals[name] += _number(counts.get(name)) or 0
        for link_counts in (counts.get("links") or {}).values():
            if isinstance(link_counts, dict):
                for name in links:
                    links[name] += _number(link_counts.get(name)) or 0
    text = f"+{totals['inserted']} ~{totals['updated']} -{totals['deleted']}"
    if any(links.values()):
        text += f", links +{links['inserted']} -{links['deleted']}"
    return text


def _aligned(rows: Sequence[Sequence[str]], last_free: bool = False) -> list[str]:
    """Columns padded to their widest cell (numbers to the right); the last column unpadded
    when ``last_free`` (a reason can be long)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = [
        len(rows) > 1 and all(row[i].isdigit() for row in rows[1:]) for i in range(len(widths))
    ]
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if last_free and i == len(row) - 1:
                cells.append(cell)
            elif numeric[i]:
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return lines


def session_table(sessions: Iterable[Mapping[str, Any]], now: float) -> list[str]:
    """``prepsync sessions list``: one line per session, as listed (newest first)."""
    rows = [("session", "state", "mode", "agent", "age", "changes", "reason")]
    for session in sessions:
        rows.append(
            (
                str(session.get("id", "?")),
                str(session.get("state", "?")) + (" (forced)" if session.get("forced") else ""),
                str(session.get("mode", "?")),
                str(session.get("agent", "?")),
                age(session.get("opened_at"), now),
                counts_text(session),
                " ".join(str(session.get("reason") or "").split()),
            )
        )
    if len(rows) == 1:
        return ["no sessions"]
    return _aligned(rows, last_free=True)


def session_detail(session: Mapping[str, Any], now: float) -> list[str]:
    """``prepsync sessions show``: the session, its per-table counts, the thresholds crossed."""
    client = session.get("client")
    agent = str(session.get("agent", "?")) + (f" (client {client})" if client else "")
    opened = session.get("opened_at")
    fields = [
        ("connector", str(session.get("connector", "?"))),
        ("mode", str(session.get("mode", "?"))),
        ("state", str(session.get("state", "?"))),
        ("agent", agent),
        ("opened", f"{opened} ({age(opened, now)} ago)"),
        ("updated", str(session.get("updated_at", "?"))),
        ("forced", "yes" if session.get("forced") else "no"),
    ]
    if session.get("reason"):
        fields.append(("reason", str(session["reason"])))
    lines = [f"session {session.get('id', '?')}"]
    lines += [f"  {name:<10} {value}" for name, value in fields]
    tables = _tables(session)
    if tables:
        names = [n for n in _COUNT_ORDER if any(n in c for c in tables.values())]
        names += sorted(
            {n for c in tables.values() for n, v in c.items() if _number(v) is not None}
            - set(names)
        )
        rows = [("table", *names)]
        rows += [
            (table, *(str(_number(counts.get(n)) or 0) for n in names))
            for table, counts in tables.items()
        ]
        header, *table_lines = _aligned(rows)
        lines += ["", header]
        for table_line, counts in zip(table_lines, tables.values(), strict=True):
            lines.append(table_line)
            links = counts.get("links")
            for link, link_counts in (links if isinstance(links, dict) else {}).items():
                if isinstance(link_counts, dict):
                    described = ", ".join(f"{k} {v}" for k, v in link_counts.items())
                    lines.append(f"  links {link}: {described}")
    else:
        lines += ["", "no counts yet: the server counts a session when it processes it"]
    crossed = session.get("thresholds")
    if not isinstance(crossed, list):
        crossed = [session["reason"]] if session.get("state") == BLOCKED else []
    if crossed:
        lines += ["", "thresholds crossed:"]
        lines += [f"  {reason}" for reason in crossed]
    return lines


def write_changes(
    api: ApiClient,
    session_id: str,
    out: BinaryIO,
    *,
    table: str | None,
    command: str | None,
    limit: int | None,
    after: str | None,
) -> str | None:
    """Write the session's changes to ``out`` as one CSV (one header). With ``limit``, one
    page of at most that many rows, and the ``after`` of the next page is returned (None when
    there is no more); without, every page is fetched and None is returned."""
    first = True
    while True:
        page, next_after = api.changes(
            session_id,
            table=table,
            command=command,
            limit=limit if limit is not None else CHANGES_PAGE,
            after=after,
        )
        if not first:
            page = page.partition(b"\n")[2]  # each page repeats the header line
        out.write(page)
        first = False
        if limit is not None or next_after is None:
            return next_after
        after = next_after
