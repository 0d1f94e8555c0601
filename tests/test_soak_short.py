"""Three seeded days of the soak (``python -m tests.soak`` runs as many as asked): the soak's
own machinery - kills, reruns, the store checked against the model - keeps working."""

from __future__ import annotations

import chaos
import soak


def test_three_days_of_soak_end_clean() -> None:
    report = soak.run_soak(3, seed=5, rows=300, log=False)
    assert report.days == 3 and report.runs >= 3
    assert report.kills >= 1, "the seed was chosen to kill something"
    assert report.clean, report.text()


def test_every_bad_export_kind_is_spoiled() -> None:
    good = b"objectGUID,dn,extra,mail\r\nguid-1,CN=a,x,a@x\r\n"
    for kind in soak.BAD_INPUTS:
        assert soak.bad_export(good, kind, ",") != good, kind


def test_the_store_comparison_counts_lost_extra_and_doubled_rows() -> None:
    """The yardstick itself: rows missing, changed, resurrected or stored twice are counted."""
    expected = [("g1", "CN=a", "a@x"), ("g2", "CN=b, two", "b@x"), ("g3", "CN=c", "")]
    stored = chaos.csv_text(
        ["objectGUID", "dn", "mail"],
        [
            ("g1", "CN=a", "a@x"),
            ("g2", "CN=b, two", "OLD"),
            ("g4", "CN=d", "d@x"),
            ("g4", "CN=d", "d@x"),
        ],
    ).encode()
    result = chaos.compare(chaos.ENTRIES, expected, stored)
    # g2 stale and g3 missing are lost; g2's old value and g4 twice are extra; g4 is doubled.
    assert (result.lost, result.extra, result.doubled) == (2, 3, 1)
    exact = chaos.csv_text(["objectGUID", "dn", "mail"], expected).encode()
    assert chaos.compare(chaos.ENTRIES, expected, exact).equal
