from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pgutil
import pytest
from serverutil import Api, ServerProcess, write_config
from sites import Site

from prepsync import _cleanse


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes seconds (big files); still part of CI")
    config.addinivalue_line(
        "markers",
        "postgres: needs PostgreSQL (tests/pgutil.py starts a throwaway cluster; skipped without"
        " PostgreSQL, except under CI=true where that is a failure)",
    )


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """Temp/ExportOutput with two tables' exports, Work/Collect, and conf.xml."""
    return Site(tmp_path)


@pytest.fixture(autouse=True)
def native_resources_released() -> Iterator[None]:
    """Every test leaves the native core as it found it: no buffer, no spill file still open and
    no worker thread still running (the core counts all three; a leak here is a leak on every
    agent run)."""
    yield
    assert _cleanse.live_counters() == {"buffers": 0, "spill_files": 0, "threads": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server on 127.0.0.1 (tests/serverutil.py's configuration), one per test module
    (a module that needs another setup defines its own ``server``)."""
    directory = tmp_path_factory.mktemp("server")
    process = ServerProcess(write_config(directory), directory / "data", directory / "server.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def api(server: ServerProcess) -> Iterator[Api]:
    """The tests' own view of the server (not through the client under test)."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield Api(http)


# ------------------------------------------------------------------------------ PostgreSQL
def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[pgutil.Databases]:
    """Where the PostgreSQL cases get their databases: one throwaway cluster for the whole run
    (or the server ``PREPSYNC_TEST_DATABASE_URL`` names), stopped at the end, Ctrl-C included.

    Without PostgreSQL the cases that need it skip, all on one line saying how to enable them;
    under CI (``CI=true``) that is a failure instead, so CI cannot pass without running them.
    """
    try:
        with pgutil.admin_url() as admin:
            yield pgutil.Databases(admin)
    except pgutil.PostgresUnavailable as error:
        _without_postgres(error)


_POSTGRES_SKIP = "PostgreSQL cases skipped:"


def _without_postgres(error: pgutil.PostgresUnavailable) -> None:
    if _under_ci():
        pytest.fail(f"CI=true and no PostgreSQL: {error}", pytrace=False)
    pytest.skip(f"{_POSTGRES_SKIP} {error}")


# Where the summary files every PostgreSQL skip: here, whichever test and (with -n) whichever
# worker process it came from.
_POSTGRES_SKIP_LOCATION = (__file__, _without_postgres.__code__.co_firstlineno)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """pytest files a fixture's skip under each test's own line, which would print one line per
    test module; the PostgreSQL skips are one cause with one remedy, so they share one location
    and fold into one line of the summary."""
    report = yield
    longrepr = getattr(report, "longrepr", None)
    if (
        getattr(report, "skipped", False)
        and isinstance(longrepr, tuple)
        and _POSTGRES_SKIP in longrepr[2]
    ):
        report.longrepr = (*_POSTGRES_SKIP_LOCATION, longrepr[2])  # type: ignore[attr-defined]
    return report


@pytest.fixture
def postgres_url(
    postgres_databases: pgutil.Databases, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh empty database for this test (``CREATE DATABASE … TEMPLATE template0``),
    dropped after it."""
    with postgres_databases.database(request.node.name) as url:
        yield url


# The stores a server can run on: the embedded SQLite default (no --database) and PostgreSQL.
STORES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The ``--database`` URL of the store under test, None for the SQLite default. A test
    asking for it runs once per store (ids ``[sqlite]`` and ``[postgresql]``), with a fresh
    database per test on PostgreSQL."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="module", params=STORES)
def module_store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """As ``store_url``, for module-scoped fixtures such as a server shared by a module's tests:
    one database per module and store."""
    if request.param == "sqlite":
        yield None
        return
    databases: pgutil.Databases = request.getfixturevalue("postgres_databases")
    with databases.database(request.module.__name__) as url:
        yield url


@pytest.fixture
def store_copy(
    request: pytest.FixtureRequest,
) -> Callable[[str | None], AbstractContextManager[str | None]]:
    """Copies a store for this test: ``with store_copy(module_store_url) as url`` gives a new
    database holding what the module's database holds (which no server may have open then),
    dropped after the test; None (SQLite, whose files travel with a copy of the data directory)
    stays None. A module builds a costly state once, each test starts from its own copy."""

    @contextlib.contextmanager
    def copy(url: str | None) -> Iterator[str | None]:
        if url is None:
            yield None
            return
        databases: pgutil.Databases = request.getfixturevalue("postgres_databases")
        with databases.database(request.node.name, copy_of=url) as copied:
            yield copied

    return copy
