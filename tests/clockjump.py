"""Run Python code with its wall clock shifted by the seconds written in a file, so that a test
can make the clock of a running server or agent jump (as NTP, a VM restore or an operator
does), without root and without touching prepsync:

    python tests/clockjump.py OFFSET_FILE -m prepsync serve ...
    python tests/clockjump.py OFFSET_FILE -c CODE ARG...

``time.time()`` and ``time.time_ns()`` (which prepsync, its logging, SQLite's callers and
uvicorn read) return the real time plus the file's number of seconds (0 when the file is
missing or unreadable), re-read at most every 20 ms. The monotonic clocks are left alone, as a
real jump of the wall clock leaves them.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

_REFRESH_NS = 20_000_000


class _Shift:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_ns = 0
        self.read_at = -_REFRESH_NS
        self.real_time_ns = time.time_ns

    def offset(self) -> int:
        now = time.monotonic_ns()
        if now - self.read_at >= _REFRESH_NS:
            self.read_at = now
            try:
                self.offset_ns = int(float(self.path.read_text() or 0) * 1e9)
            except (OSError, ValueError):
                self.offset_ns = 0
        return self.offset_ns

    def time_ns(self) -> int:
        return self.real_time_ns() + self.offset()

    def time(self) -> float:
        return self.time_ns() / 1e9


def install(path: Path) -> None:
    shift = _Shift(path)
    time.time = shift.time
    time.time_ns = shift.time_ns


def write_offset(path: Path, seconds: float) -> None:
    """Set the offset atomically (a reader never sees half a number)."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(f"{seconds:.3f}")
    partial.replace(path)


def main(argv: list[str]) -> None:
    offset_file, how, what, *rest = argv
    install(Path(offset_file))
    if how == "-m":
        sys.argv = [what, *rest]
        runpy.run_module(what, run_name="__main__", alter_sys=True)
    elif how == "-c":
        sys.argv = ["-c", *rest]
        exec(compile(what, "<clockjump>", "exec"), {"__name__": "__main__"})
    else:
        raise SystemExit(f"usage: clockjump.py OFFSET_FILE (-m MODULE | -c CODE) ARG...: {how}")


if __name__ == "__main__":
    main(sys.argv[1:])
