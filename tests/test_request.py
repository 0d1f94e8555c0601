"""The run's request, each table's job built from it, and the defaults both name once."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import click
import pytest

from prepsync import request as defaults
from prepsync.cli import prepare, serve, sessions
from prepsync.config import TableSpec, Thresholds
from prepsync.dialect import ReadSettings
from prepsync.errors import UsageError
from prepsync.exchange import RetryPolicy
from prepsync.protocol import DEFAULT_SEPARATOR
from prepsync.request import PrepareRequest, TableJob
from prepsync.server import defaults as server_defaults
from prepsync.sizes import parse_size

SPEC = TableSpec("People", ("id", "name"), ("id",), Thresholds())


def _defaults(command: click.Command) -> dict[str, object]:
    return {param.name: param.default for param in command.params if param.name}


def test_prepare_options_default_to_the_named_constants() -> None:
    options = _defaults(prepare)
    assert parse_size(str(options["memory_budget"])) == defaults.DEFAULT_MEMORY_BUDGET
    assert parse_size(str(options["upload_chunk_size"])) == defaults.DEFAULT_UPLOAD_CHUNK_SIZE
    assert options["separator"] == DEFAULT_SEPARATOR
    assert options["command_column"] == defaults.DEFAULT_COMMAND_COLUMN
    assert options["api_retry_seconds"] == defaults.DEFAULT_RETRY_SECONDS
    assert options["wait_timeout"] == defaults.DEFAULT_WAIT_TIMEOUT


def test_operator_commands_retry_for_their_own_default() -> None:
    assert isinstance(sessions, click.Group)
    for command in sessions.commands.values():
        retry = _defaults(command)["api_retry_seconds"]
        assert retry == defaults.DEFAULT_OPERATOR_RETRY_SECONDS, command.name


def test_serve_options_and_the_servers_parameters_share_their_defaults() -> None:
    from prepsync.server import create_app
    from prepsync.server import serve as run_server

    options = _defaults(serve)
    parameters = {
        **{
            name: parameter.default
            for name, parameter in inspect.signature(create_app).parameters.items()
        },
        **{
            name: parameter.default
            for name, parameter in inspect.signature(run_server).parameters.items()
        },
    }
    for name in (
        "host",
        "port",
        "session_timeout",
        "timeout_keep_alive",
        "read_timeout",
        "max_connections",
        "operator_profile",
    ):
        constant = getattr(server_defaults, f"DEFAULT_{name.upper()}")
        assert options[name] == parameters[name] == constant, name


def test_the_command_line_reads_the_defaults_without_loading_the_server() -> None:
    code = "import sys, prepsync.cli; print(sorted({'starlette', 'uvicorn'} & set(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"


def test_the_api_defaults_are_the_same_constants() -> None:
    assert RetryPolicy().total_seconds == defaults.DEFAULT_RETRY_SECONDS
    request = PrepareRequest(
        connector="C", mode="complete", sources_dir=Path("s"), working_dir=Path("w")
    )
    assert request.memory_budget == defaults.DEFAULT_MEMORY_BUDGET
    assert request.separator == DEFAULT_SEPARATOR
    assert ReadSettings().separator == DEFAULT_SEPARATOR
    assert request.command_column == defaults.DEFAULT_COMMAND_COLUMN
    job = TableJob(spec=SPEC, source=Path("s/People.csv"))
    assert (job.memory_budget, job.separator, job.command_column) == (
        request.memory_budget,
        request.separator,
        request.command_column,
    )


def test_a_table_job_carries_the_runs_settings_and_the_tables_own() -> None:
    own = ReadSettings(separator=";", encoding="latin-1", skip_lines=2)
    request = PrepareRequest(
        connector="C",
        mode="Incremental",
        sources_dir=Path("sources"),
        working_dir=Path("work"),
        separator="|",
        command_column="op",
        encoding="utf-16le",
        table_settings={"people": own},
    )
    job = request.table_job(
        SPEC, Path("sources/people.csv"), memory_budget=64 << 20, budget_shares=4
    )
    assert job == TableJob(
        spec=SPEC,
        source=Path("sources/people.csv"),
        mode="incremental",
        baseline=Path("sources/previous/People.sorted.csv"),
        command_column="op",
        separator="|",
        settings=own,
        memory_budget=64 << 20,
        budget_shares=4,
    )
    other = request.table_job(
        TableSpec("Groups", ("g",), ("g",), Thresholds()),
        Path("sources/Groups.csv"),
        memory_budget=1 << 20,
        budget_shares=1,
    )
    assert other.read_settings == ReadSettings(separator="|", encoding="utf-16le")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.mode = "complete"  # type: ignore[misc]


def test_a_job_without_read_settings_reads_utf8_with_its_separator() -> None:
    job = TableJob(spec=SPEC, source=Path("People.csv"), separator="\t")
    assert job.read_settings == ReadSettings(separator="\t")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"mode": "sometimes"}, "unknown synchronization mode 'sometimes'"),
        ({"separator": '"'}, "the separator must be one ASCII character"),
        ({"separator": ",,"}, "the separator must be one ASCII character"),
    ],
)
def test_a_job_refuses_what_no_table_can_be_cleansed_with(
    change: dict[str, str], problem: str
) -> None:
    with pytest.raises(UsageError, match=problem):
        TableJob(spec=SPEC, source=Path("People.csv"), **change)  # type: ignore[arg-type]
