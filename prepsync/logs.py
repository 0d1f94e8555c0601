"""Log output of ``prepare`` and ``serve``: one line per record, as text or as JSON.

``--log-format json`` writes one JSON object per line (``time``, ``level``, ``logger``,
``message``, and the record's structured fields) for log shippers that would otherwise have to
parse the text. A record's structured fields come from ``extra={"fields": {...}}``: the text
format shows only the message, which already says the same in words, so the two formats never
disagree.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; an exception's traceback goes in ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for name, value in fields.items():
                document.setdefault(name, value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")


def configure(
    level: int, log_format: str = "text", logger_names: Iterable[str] = ("prepsync",)
) -> logging.Handler:
    """Send the named loggers' records at ``level`` and above to stderr, in ``log_format``.

    The loggers stop propagating to the root logger, so a record is written once whatever
    else configured logging in the process.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    for name in logger_names:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    return handler
