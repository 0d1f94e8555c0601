"""The output quoting rule's one Python copy agrees with the oracle's and reads back as written;
the separator rule is one for the agent and the server."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import format_row as oracle_format_row

from prepsync.config import TableSpec, Thresholds
from prepsync.dialect import check_separator
from prepsync.errors import UsageError
from prepsync.pipeline import format_row
from prepsync.protocol import csv_record, separator_problem
from prepsync.request import TableJob
from prepsync.server.store import format_record

SEPARATORS = st.sampled_from([",", ";", "\t", "|", " "])
SPEC = TableSpec("T", ("id",), ("id",), Thresholds())
FIELDS = st.lists(st.text(st.characters(codec="utf-8"), max_size=6), min_size=1, max_size=4)


@given(FIELDS, SEPARATORS)
def test_csv_record_is_the_oracles_rule(values: list[str], separator: str) -> None:
    expected = oracle_format_row([v.encode("utf-8") for v in values], separator.encode())
    assert (csv_record(values, separator) + "\n").encode("utf-8") == expected
    assert format_row(values, separator) == expected  # the agent's headers


@given(FIELDS, SEPARATORS)
def test_csv_record_reads_back_as_written(values: list[str], separator: str) -> None:
    line = csv_record(values, separator) + "\n"
    assert next(csv.reader(io.StringIO(line, newline=""), delimiter=separator)) == values


def test_one_empty_field_is_two_quotes_on_both_sides() -> None:
    assert csv_record([""], ";") == '""'
    assert format_row([""], ",") == b'""\n'
    assert format_record([""]) == '""'  # the server's stored rows: an empty line is no row


def test_the_store_quotes_commas_whatever_the_sessions_separator() -> None:
    assert format_record(["a;b", "c,d"]) == 'a;b,"c,d"'
    assert csv_record(["a;b", "c,d"], ";") == '"a;b";c,d'


@pytest.mark.parametrize("separator", ['"', "\r", "\n", "\x00", "", ";;", "é", "\u2028"])
def test_one_separator_rule_for_the_agent_and_the_server(tmp_path: Path, separator: str) -> None:
    problem = "must be one ASCII character other than a quote, CR or LF"
    assert separator_problem(separator) == problem  # the server's check of a session
    with pytest.raises(UsageError, match=f"^--separator {problem}$"):
        check_separator(separator, "--separator")
    # The agent's per-table job (what the engine is given) refuses it as it is built.
    with pytest.raises(UsageError, match=f"^the separator {problem}$"):
        TableJob(spec=SPEC, source=tmp_path / "T.csv", separator=separator)


@pytest.mark.parametrize("separator", [",", ";", "\t", "|", " ", "\x01", "~"])
def test_the_separators_both_sides_take(separator: str) -> None:
    assert separator_problem(separator) is None
    assert check_separator(separator) == separator
