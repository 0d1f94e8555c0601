"""Every exit status of the ``prepsync`` commands, and what each means: the one place they are
written. ``--help`` shows them from here, and docs/CLI.md is generated from ``--help``
(``python -m prepsync.cli_reference``)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from enum import IntEnum

from prepsync.protocol import BLOCKED, CANCELLED, DONE, FAILED


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # one line "error: ..." on stderr
    USAGE = 2  # click's own status for a command-line usage error
    BLOCKED = 3
    FAILED = 4  # failed or cancelled
    NO_VERDICT = 5
    # serve cannot listen (port in use, no permission, unknown address): distinct from
    # prepare's statuses, so a service manager can tell it apart.
    LISTEN_FAILURE = 6
    INTERRUPTED = 130  # 128 + SIGINT, as shells report a process ended by Ctrl-C


Meanings = Sequence[tuple[ExitStatus, str]]

PREPARE: Meanings = (
    (
        ExitStatus.OK,
        "success: offline, the outputs are written; online, the session is done (with "
        "--no-wait: queued)",
    ),
    (
        ExitStatus.ERROR,
        "bad input, configuration, baseline or server error: one line 'error: ...' on stderr "
        "(for bad input 'error: <file>, line <n> (byte <o>): <problem>'); no output replaced, "
        "baseline untouched unless the server had accepted the commit (the line then says so)",
    ),
    (ExitStatus.USAGE, "command-line usage error"),
    (
        ExitStatus.BLOCKED,
        "online: the session is blocked by a threshold; the reason and the commands to "
        "review, force or cancel it are on stderr",
    ),
    (ExitStatus.FAILED, "online: the session failed or was cancelled; the reason is on stderr"),
    (
        ExitStatus.NO_VERDICT,
        "online: no verdict within --wait-timeout; the session is committed and the server "
        "will settle it",
    ),
    (ExitStatus.INTERRUPTED, "interrupted (Ctrl-C); spill and temporary files removed"),
)

SESSIONS: Meanings = (
    (ExitStatus.OK, "success"),
    (ExitStatus.ERROR, "any error: one line 'error: ...' on stderr"),
    (ExitStatus.USAGE, "command-line usage error"),
)

SERVE: Meanings = (
    (ExitStatus.OK, "stopped (SIGTERM or Ctrl-C)"),
    (
        ExitStatus.ERROR,
        "a configuration, data directory, database or certificate it cannot use (one line "
        "on stderr)",
    ),
    (ExitStatus.USAGE, "command-line usage error"),
    (ExitStatus.LISTEN_FAILURE, "cannot listen on --host/--port (address in use, no permission)"),
)

# The server's verdicts on a committed session, and the status that says each.
VERDICTS = {
    DONE: ExitStatus.OK,
    BLOCKED: ExitStatus.BLOCKED,
    FAILED: ExitStatus.FAILED,
    CANCELLED: ExitStatus.FAILED,
}

_WIDTH = 78  # click's help is at most 80 columns; it indents an epilog by 2


def help_text(meanings: Meanings) -> str:
    """The "Exit status:" block of a command's --help (click keeps a ``\\b`` block as is)."""
    lines = ["\b", "Exit status:"]
    for status, meaning in meanings:
        lines += textwrap.wrap(
            meaning,
            _WIDTH,
            initial_indent=f"  {int(status):<5}",
            subsequent_indent=" " * 7,
            break_on_hyphens=False,
        )
    return "\n".join(lines)
