"""docs/CLI.md is generated from the commands' --help (python -m prepsync.cli_reference), and the
exit statuses in that help come from prepsync.exit_status: one source for both."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from prepsync import cli_reference, exit_status
from prepsync.cli import main


def test_the_committed_reference_is_up_to_date() -> None:
    committed = cli_reference.REFERENCE.read_text(encoding="utf-8")
    assert committed == cli_reference.render(), (
        "docs/CLI.md is out of date: run python -m prepsync.cli_reference"
    )


def test_check_fails_on_a_stale_reference_and_a_rewrite_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "CLI.md"
    stale.write_text(cli_reference.render().replace("Exit status:", "Exit codes:", 1))
    monkeypatch.setattr(cli_reference, "REFERENCE", stale)
    assert cli_reference.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert cli_reference.main([]) == 0
    assert stale.read_text() == cli_reference.render()
    assert cli_reference.main(["--check"]) == 0


@pytest.mark.parametrize(
    ("command", "meanings"),
    [
        (["prepare"], exit_status.PREPARE),
        (["sessions"], exit_status.SESSIONS),
        (["serve"], exit_status.SERVE),
    ],
)
def test_help_lists_every_exit_status_of_the_command(
    command: list[str], meanings: exit_status.Meanings
) -> None:
    result = CliRunner().invoke(main, [*command, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    block = result.output[result.output.index("Exit status:") :]
    listed = [int(line.split()[0]) for line in block.splitlines()[1:] if line[:5].strip()]
    assert listed == [int(status) for status, _meaning in meanings]
