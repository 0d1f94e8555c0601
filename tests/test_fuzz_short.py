"""A short seeded run of the fuzz target (``python -m tests.fuzz`` runs it for hours): mutated
exports and configurations must each end in exit 0 or one clean error line, with no traceback,
no leftover temporary or spill file, and baselines moved only by a successful run."""

from __future__ import annotations

from pathlib import Path

import fuzz
import pytest

from prepsync import pipeline


def test_mutated_exports_and_configurations_end_cleanly(tmp_path: Path) -> None:
    counts = fuzz.fuzz(seed=2026, cases=80, crashes=tmp_path / "crashes")
    # Both outcomes must be reached, or the run proves little about either.
    assert counts["ok"] >= 5 and counts["refused"] >= 5, counts


def test_a_broken_promise_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: an error escaping as a traceback is reported, not counted."""

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline, "prepare_connector", crash)
    case = fuzz.Case(config=fuzz.CONFIG, exports={fuzz.TABLE: fuzz.EXPORTS[0]})
    with pytest.raises(fuzz.Violation, match="uncaught RuntimeError"):
        fuzz.run_case(case, tmp_path)


@pytest.mark.parametrize("encoding", [b"u-8", b"utf-32", b"rot13", b"idna"])
def test_an_unusable_xml_encoding_declaration_is_one_clean_line(
    tmp_path: Path, encoding: bytes
) -> None:
    """Found by the fuzz target: expat asks Python's codecs for the declared encoding, and
    their LookupError or ValueError escaped as a traceback."""
    config = fuzz.CONFIG.replace(b'encoding="utf-8"', b'encoding="' + encoding + b'"')
    case = fuzz.Case(config=config, exports={fuzz.TABLE: fuzz.EXPORTS[0]})
    assert fuzz.run_case(case, tmp_path) == "refused"
