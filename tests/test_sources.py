"""Which file is a table's source (pipeline.find_source), and what is said when it cannot be."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from sites import Site

from prepsync.errors import InputError
from prepsync.pipeline import find_source


def refusal(folder: Path, table: str) -> str:
    with pytest.raises(InputError) as raised:
        find_source(folder, table)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_exact_name_wins_over_other_spellings(tmp_path: Path) -> None:
    (tmp_path / "Entries.csv").write_text("id\n")
    (tmp_path / "ENTRIES.CSV").write_text("id\n")
    assert find_source(tmp_path, "Entries") == tmp_path / "Entries.csv"


def test_the_one_case_insensitive_match_is_used(tmp_path: Path) -> None:
    (tmp_path / "hr_PEOPLE.Csv").write_text("id\n")
    (tmp_path / "hr_people.csv.bak").write_text("id\n")
    assert find_source(tmp_path, "HR_People") == tmp_path / "hr_PEOPLE.Csv"


def test_two_case_insensitive_matches_are_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "HR_PEOPLE.csv").write_text("id\n")
    (tmp_path / "Hr_People.csv").write_text("id\n")
    assert refusal(tmp_path, "hr_people") == (
        f"{tmp_path}: 2 files match table hr_people case-insensitively "
        "(HR_PEOPLE.csv, Hr_People.csv); keep only one"
    )


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    assert refusal(tmp_path, "Entries") == f"{tmp_path / 'Entries.csv'}: file not found"
    assert refusal(tmp_path / "absent", "Entries").endswith("Entries.csv: file not found")


def test_directory_named_like_the_source_says_so(tmp_path: Path) -> None:
    (tmp_path / "entries.csv").mkdir()
    assert refusal(tmp_path, "Entries") == (
        f"{tmp_path / 'entries.csv'}: is a directory, not a regular file"
    )


def test_fifo_named_like_the_source_says_so_instead_of_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "Entries.csv")
    assert refusal(tmp_path, "Entries") == (
        f"{tmp_path / 'Entries.csv'}: is a named pipe (FIFO), not a regular file"
    )


def test_socket_named_like_the_source_says_so(tmp_path: Path) -> None:
    # AF_UNIX paths are limited to ~108 bytes: bind from inside the folder.
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind("Entries.csv")
            assert refusal(tmp_path, "Entries") == (
                f"{tmp_path / 'Entries.csv'}: is a socket, not a regular file"
            )
    finally:
        os.chdir(cwd)


def test_dangling_symlink_named_like_the_source_names_its_target(tmp_path: Path) -> None:
    (tmp_path / "ENTRIES.csv").symlink_to(tmp_path / "gone.csv")
    assert refusal(tmp_path, "Entries") == (
        f"{tmp_path / 'ENTRIES.csv'}: is a symbolic link to {tmp_path / 'gone.csv'}, "
        "which does not exist"
    )


def test_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("id\n")
    (tmp_path / "Entries.csv").symlink_to(tmp_path / "real.txt")
    assert find_source(tmp_path, "Entries") == tmp_path / "Entries.csv"


def test_cli_refuses_a_directory_source_in_one_line_and_leaves_nothing(site: Site) -> None:
    (site.sources / "Members.csv").unlink()
    (site.sources / "members.csv").mkdir()
    code, _, err = site.run()
    assert code == 1
    assert err == f"error: {site.sources / 'members.csv'}: is a directory, not a regular file\n"
    assert [name for name in site.snapshot() if name.endswith(".csv")] == []
