"""What the agent and the reference server agree on: modes, file names, commands, states, scope.

Both sides import these names, so a spelling changed here changes on both sides at once. What
only one side decides (which states the server lets an operator cancel, which exit status the
agent gives a verdict) stays with that side, built from these names.
"""

from __future__ import annotations

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
