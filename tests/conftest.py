from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverutil import Api, ServerProcess, write_config
from sites import Site

from prepsync import _cleanse


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes seconds (big files); still part of CI")


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
