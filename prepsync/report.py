"""What a run tells its user: the live progress line, the per-table summary and the JSON report.

The CLI and the demo both render runs through here.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from prepsync.pipeline import RunResult, TableResult
from prepsync.private import FILE_MODE
from prepsync.sizes import format_size

if TYPE_CHECKING:
    from prepsync.sync import Delivery


class ProgressBar:
    """A one-line progress display on stderr, shown only when stderr is a terminal; tables
    cleansed at the same time share the line."""

    def __init__(self) -> None:
        self._last = ""
        self._tables: dict[str, str] = {}
        self._lock = threading.Lock()
        # Imported here: only a terminal shows the bar, and psutil's import is a fifth of the
        # CLI's start-up.
        import psutil

        self._process = psutil.Process()

    def __call__(self, table: str, phase: str, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        with self._lock:
            self._tables[table] = (
                f"{table}: {'reading' if phase == 'read' else 'writing'} {percent:3d}%"
            )
            # Live resident memory beside the tables, so a run near its budget shows it.
            memory = format_size(self._process.memory_info().rss)
            text = "\r" + "  ".join(self._tables.values()) + f"  memory {memory}"
            if text != self._last:
                sys.stderr.write(text.ljust(len(self._last)))
                sys.stderr.flush()
                self._last = text

    def close(self) -> None:
        if self._last:
            sys.stderr.write("\r" + " " * len(self._last) + "\r")
            sys.stderr.flush()


def summary_lines(run: RunResult) -> list[str]:
    """The per-table summary printed at the end of every run."""
    columns = (
        "table",
        "read",
        "kept",
        "null keys",
        "duplicates",
        "inserts",
        "updates",
        "deletes",
        "merges",
        "seconds",
        "peak memory",
    )

    def row(table: TableResult) -> tuple[str, ...]:
        return (
            table.table,
            str(table.rows_read),
            str(table.kept),
            str(table.null_keys),
            str(table.duplicates),
            str(table.inserts),
            str(table.updates),
            str(table.deletes),
            str(table.merges),
            f"{table.seconds:.2f}",
            format_size(table.peak_rss),
        )

    rows = [columns, *(row(table) for table in run.tables)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.append(
        f"{run.request.mode} run of {run.request.connector}: {len(run.tables)} table(s) in "
        f"{run.seconds:.2f} s, peak memory {format_size(run.peak_rss)} "
        f"(budget {format_size(run.request.memory_budget)})"
    )
    return lines


def write_report(path: Path, run: RunResult, delivery: Delivery | None) -> None:
    """``--report``: the summary's figures as JSON, with what the server was sent and said."""
    document = run.to_json()
    if delivery:
        document["delivery"] = delivery.to_json()
    # Owner only, as every file prepsync writes: it names tables, sessions and reasons.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(descriptor, FILE_MODE)  # a report file written before by a version without this
    with open(descriptor, "w", encoding="utf-8") as out:
        out.write(json.dumps(document, indent=2) + "\n")
