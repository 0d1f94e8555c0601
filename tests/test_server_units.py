"""Unit tests of the server's pure parts: key order, CSV output, names, ranges, tokens."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from serverutil import csv_bytes

from prepsync.server.http import parse_content_range
from prepsync.server.session_files import file_name_problem
from prepsync.server.sessions import canonical_session_id
from prepsync.server.store import encode_key, format_record
from prepsync.server.tokens import TokenSigner, basic_credentials, bearer_token, load_or_create_key

values = st.text(st.characters(codec="utf-8"), max_size=6)
keys = st.lists(values, min_size=1, max_size=3)


def spec_order(key: list[str]) -> list[bytes]:
    # REFERENCE §2: column by column, bytes of UTF-8; Python's bytes order is prefix-first.
    return [value.encode("utf-8") for value in key]


@given(st.lists(values, min_size=2, max_size=2), st.lists(values, min_size=2, max_size=2))
def test_encoded_keys_sort_in_spec_order(first: list[str], second: list[str]) -> None:
    expected = (spec_order(first) > spec_order(second)) - (spec_order(first) < spec_order(second))
    actual = (encode_key(first) > encode_key(second)) - (encode_key(first) < encode_key(second))
    assert actual == expected


def test_key_encoding_prefix_and_nul_cases() -> None:
    ordered = [["a"], ["a\x00"], ["a\x00b"], ["a\x01"], ["ab"], ["b"]]
    assert sorted(ordered, key=encode_key) == ordered
    assert encode_key(["a", "bc"]) < encode_key(["ab", "c"])  # column by column, not joined


@given(st.lists(values, min_size=2, max_size=4))
def test_format_record_round_trips_through_csv(row: list[str]) -> None:
    record = format_record(row)
    assert next(csv.reader(io.StringIO(record + "\n"))) == row
    assert record.encode("utf-8") + b"\n" == csv_bytes(row, [])


def test_format_record_quotes_only_when_needed() -> None:
    assert format_record(["a", "", "b c", 'x"y', "1,2", "l\nf", "c\rr"]) == (
        'a,,b c,"x""y","1,2","l\nf","c\rr"'
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../x.sorted.csv",
        "a/b.sorted.csv",
        "a\\b.sorted.csv",
        "/etc/passwd",
        "x\x00.csv",
        "a..sorted.csv",
        "tab\t.csv",
        "x" * 256,
    ],
)
def test_bad_file_names_are_refused(name: str) -> None:
    assert file_name_problem(name) is not None


def test_plain_file_names_pass() -> None:
    assert file_name_problem("ADExport_entries.sorted.delta.csv") is None
    assert file_name_problem("é.sorted.csv") is None


def test_content_range() -> None:
    assert parse_content_range("bytes 0-9/10") is not None
    parsed = parse_content_range("bytes 5-9/*")
    assert parsed is not None and (parsed.start, parsed.length, parsed.total) == (5, 5, None)
    for bad in ["bytes 9-5/10", "bytes 0-10/10", "items 0-1/2", "bytes 0-1", "bytes -1-2/3", ""]:
        assert parse_content_range(bad) is None


SECRET_A = "A" * 43 + "="  # two HashedSecret values: base64 of 32 bytes
SECRET_B = "B" * 43 + "="


def test_tokens_sign_expire_and_resist_forgery(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "token.key").st_mode) == 0o600
    assert load_or_create_key(tmp_path) == key  # kept: tokens survive a restart
    signer = TokenSigner(key)
    secrets = {"agent": SECRET_A, "admin": SECRET_A}.get
    token = signer.issue("agent", SECRET_A, 60, now=1000)
    assert signer.verify(token, secrets, now=1059) == "agent"
    assert signer.verify(token, secrets, now=1060) is None  # expired
    assert TokenSigner(b"k" * 32).verify(token, secrets, now=1000) is None  # another key
    payload, signature = token.split(".")
    forged = TokenSigner(key).issue("admin", SECRET_B, 60, now=1000).split(".")[0]
    assert signer.verify(f"{forged}.{signature}", secrets, now=1000) is None
    assert signer.verify("garbage", secrets, now=1000) is None
    assert signer.verify(payload + ".", secrets, now=1000) is None
    assert signer.verify(token, {}.get, now=1000) is None  # the client is gone


def test_a_token_dies_with_the_secret_it_was_issued_for(tmp_path: Path) -> None:
    signer = TokenSigner(load_or_create_key(tmp_path))
    token = signer.issue("agent", SECRET_A, 3600, now=1000)
    assert signer.verify(token, {"agent": SECRET_A}.get, now=1001) == "agent"
    assert signer.verify(token, {"agent": SECRET_B}.get, now=1001) is None  # rotated
    # The secret is in the signature, not in the readable payload.
    encoded = token.split(".")[0]
    payload = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert payload.keys() == {"sub", "exp"}


def test_authorization_headers() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None
    assert basic_credentials("Basic YWdlbnQ6cyUzQWI=") == ("agent", "s:b")
    assert basic_credentials("Basic !!") is None
    # A browser's Basic (RFC 7617) sends the secret as typed: "s%3Ab" and "a+b" stay as they are.
    assert basic_credentials("Basic YWdlbnQ6cyUzQWI=", form_encoded=False) == ("agent", "s%3Ab")
    assert basic_credentials("Basic b3A6YStiOmM=", form_encoded=False) == ("op", "a+b:c")


def test_session_ids_must_be_canonical() -> None:
    assert canonical_session_id("0f8fad5b-d9cb-469f-a165-70867728950e") is not None
    for bad in [
        "..",
        "0f8fad5bd9cb469fa16570867728950e",
        "{0f8fad5b-d9cb-469f-a165-70867728950e}",
        "",
    ]:
        assert canonical_session_id(bad) is None
