"""Three seeded days of the soak (``python -m tests.soak`` runs as many as asked): the soak's
own machinery - kills, reruns, the store checked against the model - keeps working."""

from __future__ import annotations

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
