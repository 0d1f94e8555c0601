"""What an operator sees of sessions without asking: one log line per transition, and metrics.

Every transition of a session is one INFO line of the ``prepsync.server.events`` logger, said
in words for a person and carried as fields for ``--log-format json`` (``event``, ``session``,
``connector``, and what the event has: bytes, tables, thresholds, counts, seconds, reason,
``by``). The lines are written by whoever made the transition (the endpoints, the commit, the
worker), after the sessions database recorded it, so a line never announces a transition that
did not happen.

Metrics (``GET /metrics``, Prometheus text format): counters and the apply-time histogram are
this process's (a Prometheus server sums them over the processes it scrapes); sessions by state
and the queue depth are read from the sessions database at each scrape, so every process
reports the same, right, figures however many share the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from prepsync.protocol import BLOCKED, CANCELLED, DONE, FAILED, OPEN, PROCESSING, QUEUED
from prepsync.server.sessions import Session

logger = logging.getLogger("prepsync.server.events")

STATES = (OPEN, QUEUED, PROCESSING, BLOCKED, DONE, FAILED, CANCELLED)
# Apply times from a small delta (tens of ms) to a multi-million-row complete load (minutes).
APPLY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 150, 300, 600, 1800, 3600)


def changes_text(counts: Mapping[str, Any]) -> str:
    """One table's changes in words, as the log and the status page both show them."""
    text = (
        f"{counts.get('inserted', 0)} inserted, {counts.get('updated', 0)} updated, "
        f"{counts.get('deleted', 0)} deleted"
    )
    for association, links in (counts.get("links") or {}).items():
        text += (
            f" ({association}: {links.get('inserted', 0)} links inserted, "
            f"{links.get('deleted', 0)} deleted)"
        )
    return text


def tables_changes_text(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Every table's changes of a session's summary, ``table: changes`` joined by ``; ``."""
    return "; ".join(f"{name}: {changes_text(counts)}" for name, counts in tables.items())


class SessionStateCollector(Collector):
    """Sessions by connector and state, and queue depth, read at scrape time."""

    def __init__(self, read_counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._read_counts = read_counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._read_counts()
        sessions = GaugeMetricFamily(
            "prepsync_sessions",
            "Sessions by connector and state, as the sessions database holds them.",
            labels=["connector", "state"],
        )
        depth = GaugeMetricFamily(
            "prepsync_queue_depth",
            "Committed sessions of a connector waiting to be applied (queued, or processing), "
            "and blocked ones waiting for an operator.",
            labels=["connector"],
        )
        connectors = sorted({connector for connector, _state in counts})
        for connector in connectors:
            for state in STATES:
                sessions.add_metric([connector, state], counts.get((connector, state), 0))
            waiting = sum(counts.get((connector, state), 0) for state in (QUEUED, PROCESSING))
            depth.add_metric([connector], waiting + counts.get((connector, BLOCKED), 0))
        yield sessions
        yield depth

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # read at scrape time only: nothing to read at registration


class SessionEvents:
    """The transition log and the metrics of one server (one registry per app, so that apps
    built in one process, as tests do, do not share figures)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.bytes_received = Counter(
            "prepsync_received_bytes",
            "Bytes of session files received (upload chunks written).",
            registry=self.registry,
        )
        self.threshold_blocks = Counter(
            "prepsync_threshold_blocks",
            "Sessions blocked by a threshold.",
            ["connector"],
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "prepsync_apply_seconds",
            "Seconds the worker spent applying (or judging) a session, by outcome.",
            ["connector", "mode", "state"],
            buckets=APPLY_BUCKETS,
            registry=self.registry,
        )

    def watch_sessions(self, read_counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self.registry.register(SessionStateCollector(read_counts))

    # ------------------------------------------------------------------------ transitions
    def _log(self, event: str, message: str, *args: object, **fields: Any) -> None:
        logger.info(message, *args, extra={"fields": {"event": event, **fields}})

    def opened(self, session: Session, cancelled: Sequence[str]) -> None:
        self._log(
            "opened",
            "session %s opened: %s %s by agent %s (client %s)",
            session.id,
            session.connector,
            session.mode,
            session.agent,
            session.client,
            session=session.id,
            connector=session.connector,
            mode=session.mode,
            agent=session.agent,
            client=session.client,
        )
        for other in cancelled:
            self.cancelled(other, session.connector, f"{session.mode} session {session.id}")

    def committed(self, session: Session, files: Sequence[Mapping[str, Any]]) -> None:
        size = sum(int(entry["size"]) for entry in files)
        self._log(
            "committed",
            "session %s committed: %s %s, %d bytes in %d tables, queued",
            session.id,
            session.connector,
            session.mode,
            size,
            len(files),
            session=session.id,
            connector=session.connector,
            mode=session.mode,
            bytes=size,
            tables=len(files),
            files=[entry["name"] for entry in files],
        )

    def received(self, size: int) -> None:
        self.bytes_received.inc(size)

    def forced(self, session: Session, by: str) -> None:
        self._log(
            "forced",
            "session %s forced by %s: queued again, thresholds off",
            session.id,
            by,
            session=session.id,
            connector=session.connector,
            by=by,
        )

    def cancelled(self, session_id: str, connector: str | None, by: str) -> None:
        self._log(
            "cancelled",
            "session %s cancelled by %s",
            session_id,
            by,
            session=session_id,
            connector=connector,
            by=by,
        )

    def recovered(self, session: Session, state: str, why: str) -> None:
        """A session a crash or a stop left processing, settled at start."""
        self._log(
            "recovered",
            "session %s %s: %s",
            session.id,
            state,
            why,
            session=session.id,
            connector=session.connector,
            mode=session.mode,
            state=state,
        )

    def finished(
        self,
        session: Session,
        state: str,
        reason: str | None,
        summary: Mapping[str, Any] | None,
    ) -> None:
        """The worker's verdict: done, blocked or failed."""
        summary = summary or {}
        seconds = summary.get("apply_seconds")
        tables: Mapping[str, Any] = summary.get("tables") or {}
        if seconds is not None:
            self.apply_seconds.labels(session.connector, session.mode, state).observe(seconds)
        common: dict[str, Any] = {
            "session": session.id,
            "connector": session.connector,
            "mode": session.mode,
            "forced": session.forced,
            "apply_seconds": seconds,
        }
        per_table = tables_changes_text(tables)
        if state == DONE:
            self._log(
                "done",
                "session %s done: %s %s%s, %s, applied in %s s",
                session.id,
                session.connector,
                session.mode,
                " (forced)" if session.forced else "",
                per_table or "no table",
                seconds,
                tables=dict(tables),
                **common,
            )
        elif state == BLOCKED:
            self.threshold_blocks.labels(session.connector).inc()
            crossed = list(summary.get("thresholds") or ([reason] if reason else []))
            self._log(
                "blocked",
                "session %s blocked: %s %s crossed %d threshold(s): %s; it would make %s",
                session.id,
                session.connector,
                session.mode,
                len(crossed),
                " | ".join(crossed),
                per_table or "no change",
                thresholds=crossed,
                tables=dict(tables),
                **common,
            )
        else:
            self._log(
                state,
                "session %s %s: %s %s: %s",
                session.id,
                state,
                session.connector,
                session.mode,
                reason or "no reason given",
                reason=reason,
                **common,
            )
