"""The output quoting rule's one Python copy agrees with the oracle's and reads back as written."""

from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st
from reference import format_row as oracle_format_row

from prepsync.pipeline import format_row
from prepsync.protocol import csv_record
from prepsync.server.store import format_record

SEPARATORS = st.sampled_from([",", ";", "\t", "|", " "])
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
