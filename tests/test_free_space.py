"""The up-front free-space check: a run the working directory cannot hold is refused in one line
before anything is written, instead of failing on a full disk half-way."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pytest
from click.testing import CliRunner
from serverutil import prepare_argv
from sites import Site, entity_config

from prepsync import cli

Usage = namedtuple("Usage", "total used free")


def export(site: Site, rows: int) -> int:
    """A table of three columns, two of them kept; returns the file's size."""
    lines = ["id,name,ignored", *(f"{i:06d},name-{i:06d},{'x' * 20}" for i in range(rows))]
    path = site.sources / "T.csv"
    path.write_text("\n".join(lines) + "\n")
    return path.stat().st_size


def prepare(site: Site) -> tuple[int, str]:
    config = site.root / "free.xml"
    config.write_text(entity_config("C", {"T": ("id", "name")}))
    argv = prepare_argv("C", agent="a", config=config, sources=site.sources, working=site.working)
    result = CliRunner().invoke(cli.main, argv)
    return result.exit_code, result.output


@pytest.mark.parametrize("free_share, refused", [(1.0, True), (1.5, False)])
def test_a_run_needing_more_than_the_free_space_is_refused_up_front(
    site: Site, monkeypatch: pytest.MonkeyPatch, free_share: float, refused: bool
) -> None:
    size = export(site, 2000)
    kept = size * 2 // 3  # two of three columns: the estimate the check makes
    free = int(kept * 2 * free_share) - (1 if refused else 0)
    monkeypatch.setattr(
        "prepsync.pipeline.shutil.disk_usage", lambda _path: Usage(1 << 40, 0, free)
    )
    status, output = prepare(site)
    if refused:
        assert status == 1
        assert output.count("\n") == 1 and "not enough free space in" in output
        assert "PREPSYNC_SPACE_CHECK=0" in output
        assert not (site.working / "T.sorted.csv").exists()
        assert not (site.sources / "previous").exists()
    else:
        assert status == 0, output


def test_the_check_can_be_skipped(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    export(site, 100)
    monkeypatch.setenv("PREPSYNC_SPACE_CHECK", "0")
    monkeypatch.setattr("prepsync.pipeline.shutil.disk_usage", lambda _path: Usage(1 << 40, 0, 0))
    status, output = prepare(site)
    assert status == 0, output
    assert Path(site.working / "T.sorted.csv").exists()


def test_a_utf16_export_counts_as_the_utf8_text_it_makes(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UTF-16 takes twice the bytes of the (ASCII) text its outputs and spill files hold: the
    estimate halves it, so a disk with room for the UTF-8 run is not refused."""
    size = export(site, 2000)
    path = site.sources / "T.csv"
    path.write_bytes(b"\xff\xfe" + path.read_text().encode("utf-16-le"))
    free = size * 2 // 3 * 2 + 1024  # room for the run the UTF-8 file would make
    monkeypatch.setattr(
        "prepsync.pipeline.shutil.disk_usage", lambda _path: Usage(1 << 40, 0, free)
    )
    status, output = prepare(site)
    assert status == 0, output
