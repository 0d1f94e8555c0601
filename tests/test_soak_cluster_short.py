"""Two days of the cluster soak (``python -m tests.soak_cluster`` runs as many as asked): three
server processes on one PostgreSQL database and one data directory, servers killed as uploads
and commits reach them, agents killed, every connector's store checked every day."""

from __future__ import annotations

import pytest
import soak_cluster

pytestmark = pytest.mark.postgres


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
