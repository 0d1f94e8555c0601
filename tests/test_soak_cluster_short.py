"""Two days of the cluster soak (``python -m tests.soak_cluster`` runs as many as asked): three
server processes on one PostgreSQL database and one data directory, servers killed as uploads
and commits reach them, agents killed, every connector's store checked every day."""

from __future__ import annotations

import random

import chaos
import pytest
import soak_cluster


@pytest.mark.postgres
def test_two_days_of_three_servers_on_one_database_end_clean(postgres_url: str) -> None:
    report = soak_cluster.run_cluster_soak(
        2,
        seed=2,
        database=postgres_url,
        servers=3,
        connectors=3,
        rows=100,
        log=False,
        # Every delivery's first run orders a server kill as its upload or its commit arrives.
        order_weights=(0, 50, 50),
    )
    assert report.days == 2 and report.runs >= 6
    assert report.server_kills["mid-upload"] + report.server_kills["mid-commit"] >= 1
    assert report.clean, report.text()


def test_a_pair_of_sessions_applied_out_of_order_leaves_other_rows() -> None:
    """The yardstick of the order check: the second session of a pair touches the keys the
    first one did, so only the opening order yields the model's rows."""
    Rows = dict[str, tuple[str, str, str]]

    def delta(old: Rows, new: Rows) -> tuple[Rows, set[str]]:
        return {k: v for k, v in new.items() if old.get(k) != v}, set(old) - set(new)

    def apply(rows: Rows, change: tuple[Rows, set[str]]) -> Rows:
        upserts, deletes = change
        return {k: v for k, v in {**rows, **upserts}.items() if k not in deletes}

    for seed in range(20):
        model = chaos.Model.create(seed, size=60)
        model.next_day()  # a first day, so there is something to change
        day0 = dict(model.entries)
        model.next_day()
        day1 = dict(model.entries)
        soak_cluster.redo_changes(model, day0, random.Random(seed))
        day2 = dict(model.entries)
        first, second = delta(day0, day1), delta(day1, day2)
        assert apply(apply(day0, first), second) == day2
        if first != ({}, set()):
            assert apply(apply(day0, second), first) != day2, seed
