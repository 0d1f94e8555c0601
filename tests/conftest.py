from __future__ import annotations

from pathlib import Path

import pytest
from sites import Site


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes seconds (big files); still part of CI")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """Temp/ExportOutput with two tables' exports, Work/Collect, and conf.xml."""
    return Site(tmp_path)
