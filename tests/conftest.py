from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
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
