"""The server's base URL from what a user typed after ``--api-url``."""

from __future__ import annotations

import re
import urllib.parse

from prepsync.errors import UsageError

_SCHEME_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_HOST_NAME = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?"
)


def parse_api_url(text: str) -> str:
    """The server's base URL from what a user typed after ``--api-url``.

    A bare host (``myserver.example.com``, ``host:5000``, ``host/prefix``), as Identity
    Manager's docs write it, means ``https://`` that host. Anything else must be an http(s) URL
    with a host, an optional valid port and path, and nothing more: a scheme other than http(s),
    a missing host, a bad port, a space, credentials, a query or a fragment are a
    :class:`UsageError` in one line, since each would only fail later and less clearly (or, for
    credentials, end up in logs).
    """

    def refuse(problem: str) -> UsageError:
        return UsageError(f"--api-url {text!r}: {problem}")

    if not text:
        raise refuse("empty")
    if any(character.isspace() for character in text):
        raise refuse("contains white space")
    scheme = _SCHEME_PREFIX.match(text)
    if scheme is None and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", text):
        raise refuse("malformed URL (a scheme is followed by '://')")
    if scheme is None:
        url = f"https://{text}"
    elif scheme.group(1).lower() in ("http", "https"):
        url = text
    else:
        raise refuse(f"unsupported scheme {scheme.group(1)!r} (use https://host or http://host)")
    try:
        parts = urllib.parse.urlsplit(url)  # checks a bracketed IPv6 literal too
    except ValueError as error:
        raise refuse(f"malformed URL ({error})") from None
    if "@" in parts.netloc:
        raise refuse("must not hold credentials (use --api-client-id and --api-secret)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise refuse("a server URL has no query or fragment")
    host = parts.hostname or ""
    if not host:
        raise refuse("no host")
    if ":" not in host and not _HOST_NAME.fullmatch(host):  # ":": an IPv6 literal, checked
        raise refuse(f"invalid host name {host!r}")
    if parts.netloc.endswith(":"):
        raise refuse("empty port")
    try:
        port = parts.port
    except ValueError:
        raise refuse("invalid port (a number from 1 to 65535)") from None
    if port == 0:
        raise refuse("invalid port (a number from 1 to 65535)")
    return url
