"""--api-url as users write it: Identity Manager's docs give a bare host (REFERENCE §6)."""

from __future__ import annotations

import importlib.metadata

import pytest
from sites import Site

from prepsync.client import parse_api_url
from prepsync.errors import UsageError


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("myserver.usercube.com", "https://myserver.usercube.com"),  # the docs' own example
        ("myserver.usercube.com:5000", "https://myserver.usercube.com:5000"),
        ("localhost:5000/prefix/", "https://localhost:5000/prefix/"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("HTTPS://Server.Example.com/", "HTTPS://Server.Example.com/"),
        ("https://[::1]:8443", "https://[::1]:8443"),
    ],
)
def test_accepted_urls(typed: str, url: str) -> None:
    assert parse_api_url(typed) == url


@pytest.mark.parametrize(
    ("typed", "problem"),
    [
        ("ftp://x", "unsupported scheme 'ftp' (use https://host or http://host)"),
        ("http://", "no host"),
        ("https://:5000", "no host"),
        ("http:/server", "malformed URL (a scheme is followed by '://')"),
        ("garbage!", "invalid host name 'garbage!'"),
        ("my server", "contains white space"),
        ("server:http", "invalid port (a number from 1 to 65535)"),
        ("server:70000", "invalid port (a number from 1 to 65535)"),
        ("server:", "empty port"),
        (
            "https://user:pw@server",
            "must not hold credentials (use --api-client-id and --api-secret)",
        ),
        ("https://server/?x=1", "a server URL has no query or fragment"),
        ("https://[::zz]", "malformed URL ("),  # then the standard library's reason
    ],
)
def test_refused_urls_say_why_in_one_line(typed: str, problem: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_api_url(typed)
    message = str(raised.value)
    assert message.startswith(f"--api-url {typed!r}: {problem}") and "\n" not in message


@pytest.mark.parametrize("typed", ["ftp://x", "http://", "garbage!"])
def test_cli_refuses_a_malformed_url_in_one_line_with_status_1(site: Site, typed: str) -> None:
    code, _, err = site.run(
        "complete", "--api-url", typed, "--api-client-id", "agent", "--api-secret", "s"
    )
    assert code == 1
    assert err.startswith(f"error: --api-url {typed!r}: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not site.working.exists() or not list(site.working.glob("*.csv"))


def test_docs_spelling_of_the_console_script_is_installed() -> None:
    scripts = {
        entry.name: entry.value
        for entry in importlib.metadata.entry_points(group="console_scripts")
        if entry.dist is not None and entry.dist.name == "prepsync"
    }
    assert scripts["identitymanager-Prepare-Synchronization"] == "prepsync.cli:prepare_main"
    assert scripts["identitymanager-prepare-synchronization"] == "prepsync.cli:prepare_main"
