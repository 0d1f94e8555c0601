"""Every failure a user can cause is a :class:`PrepsyncError` with a one-line message.

The CLI prints ``error: <message>`` and exits with status 1; anything else escaping is a bug.
"""

from __future__ import annotations

import os


class PrepsyncError(Exception):
    """Base class: the message is one line, fit to show a user as it is."""


class ConfigError(PrepsyncError):
    """The configuration (XML or server mappings) is unusable for the connector."""


class UsageError(PrepsyncError):
    """Arguments that parse but do not make sense together."""


class InputError(PrepsyncError):
    """A source file is missing or malformed; names the file, line and problem."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        problem: str,
        line: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.line = line
        self.offset = offset
        where = self.path if line is None else f"{self.path}, line {line}"
        if offset is not None:
            where += f" (byte {offset})"
        super().__init__(f"{where}: {problem}")


class DataError(PrepsyncError):
    """The server cannot apply a session's file; the message names the file and the line."""


class BaselineError(PrepsyncError):
    """The previous run's baseline cannot be used; a complete synchronization is needed."""

    def __init__(self, table: str, problem: str) -> None:
        self.table = table
        self.problem = problem
        super().__init__(
            f"table {table}: {problem}; run a complete synchronization to rebuild the baseline"
        )


class ServerError(PrepsyncError):
    """The server refused a request or could not be reached within the retry budget."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of a refusal; None when there was no answer
