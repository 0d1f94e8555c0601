"""Every default of the reference server, named once: ``prepsync serve`` reads them for its
options' defaults and help, and :func:`prepsync.server.serve` and
:func:`prepsync.server.create_app` for their parameters'. Imports nothing, so that the command
line can read it without loading the server.
"""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
#: Seconds after which an idle open session is abandoned.
DEFAULT_SESSION_TIMEOUT = 3600.0
#: Seconds a bearer token the server issues stays valid.
DEFAULT_TOKEN_TTL = 3600
#: Seconds an idle keep-alive connection stays open.
DEFAULT_TIMEOUT_KEEP_ALIVE = 5.0
#: Seconds a client has to send a request's headers, and the longest pause in its body.
DEFAULT_READ_TIMEOUT = 15.0
#: Open connections at most (fewer if the file limit is lower).
DEFAULT_MAX_CONNECTIONS = 1000
#: Identity Manager's profile of the clients allowed to do everything.
DEFAULT_OPERATOR_PROFILE = "Administrator"
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # one upload chunk
DEFAULT_MAX_FILE_SIZE = 64 * 1024**3
