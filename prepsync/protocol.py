"""What the agent and the reference server agree on: modes, file names, commands, states, scope.

Both sides import these names, so a spelling changed here changes on both sides at once. What
only one side decides (which states the server lets an operator cancel, which exit status the
agent gives a verdict) stays with that side, built from these names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The OAuth 2 scope an agent asks for and the server requires (Identity Manager's own).
SCOPE = "usercube_api"

# ------------------------------------------------------------------------------ modes
INITIAL = "initial"
COMPLETE = "complete"
INCREMENTAL = "incremental"
MODES = (INITIAL, COMPLETE, INCREMENTAL)
# Modes that send every table whole: the server replaces each table's rows.
FULL_MODES = frozenset({INITIAL, COMPLETE})

# ------------------------------------------------------------------------------ files
# Each output adds its suffix to the table name (``<ConnectionTable><suffix>``).
SORTED_SUFFIX = ".sorted.csv"
DELTA_SUFFIX = ".sorted.delta.csv"
NULLPK_SUFFIX = ".nullpk.csv"
DUPLICATES_SUFFIX = ".duplicates.csv"


def upload_suffix(mode: str) -> str:
    """The suffix of the files a session of ``mode`` carries: the delta for incremental
    sessions, the whole sorted table for complete and initial ones."""
    return DELTA_SUFFIX if mode == INCREMENTAL else SORTED_SUFFIX


# ------------------------------------------------------------------------------ CSV dialect
# The field separator of a session's files when the session names none, and the agent's
# default (its outputs', and its sources' unless a table's settings say otherwise).
DEFAULT_SEPARATOR = ","


def separator_problem(separator: str) -> str | None:
    """Why ``separator`` cannot separate the fields of prepsync's files, or None.

    One ASCII character other than those CSV gives a meaning (a quote, CR, LF) and NUL (which
    the native reader takes for no separator). The agent checks ``--separator`` (and each
    table's) with it, the server a session's; the phrase completes "the separator ...".
    """
    if len(separator) != 1 or separator in '"\r\n\0' or not separator.isascii():
        return "must be one ASCII character other than a quote, CR or LF"
    return None


# The characters other than the separator that make a field quoted.
_NEEDS_QUOTES = re.compile('["\r\n]')


def csv_record(values: Sequence[str], separator: str) -> str:
    """One output record, without its line end, as every file prepsync writes spells it.

    A field is quoted only when it holds the separator, ``"``, CR or LF, its quotes doubled; a
    record of one empty field is ``""`` (an empty line would read back as no record at all).
    The native engine writes the same rule in C (its hot path); this is the Python side's one
    copy, for headers, the server's stored rows and its CSV answers.
    """
    if len(values) == 1 and not values[0]:
        return '""'
    joined = separator.join(values)
    # Most records need no quote at all: then the plain join is the record (both scans in C).
    if joined.count(separator) == len(values) - 1 and not _NEEDS_QUOTES.search(joined):
        return joined
    return separator.join(
        [
            '"' + value.replace('"', '""') + '"'
            if separator in value or '"' in value or "\r" in value or "\n" in value
            else value
            for value in values
        ]
    )


# ------------------------------------------------------------------------------ commands
# A delta file's first column, always spelled so (whatever the source's command column is).
COMMAND_COLUMN = "command"
INSERT = "insert"
UPDATE = "update"
DELETE = "delete"
MERGE = "merge"  # an update when the key is stored, else an insert
COMMANDS = (INSERT, UPDATE, DELETE, MERGE)

# ------------------------------------------------------------------------------ session states
OPEN = "open"
QUEUED = "queued"
PROCESSING = "processing"
BLOCKED = "blocked"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
# No transition leaves these.
FINAL_STATES = frozenset({DONE, FAILED, CANCELLED})
# What an agent waiting for its session's outcome stops on: a final state, or blocked (which
# only an operator's force or cancel settles).
VERDICT_STATES = (DONE, BLOCKED, FAILED, CANCELLED)

# ------------------------------------------------------------------------------ review paging
# GET /api/sessions/{id}/changes: a page cut short by ``limit`` names the next ``after`` here.
NEXT_AFTER_HEADER = "Prepsync-Next-After"

# ------------------------------------------------------------------------------ a full disk
# The start of the error of every 507 Insufficient Storage the server answers; the agent says
# it too when a server answers 507 without it.
DISK_FULL = "the server's disk is full"
