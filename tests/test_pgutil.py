"""The PostgreSQL test fixtures themselves: a real server, durable settings, and a database per
test that no other test sees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pgutil
import psycopg
import pytest

pytestmark = pytest.mark.postgres


def test_each_test_gets_an_empty_database_of_its_own(
    postgres_url: str, postgres_databases: pgutil.Databases
) -> None:
    with psycopg.connect(postgres_url) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        connection.execute("CREATE TABLE mine (key text PRIMARY KEY)")
        connection.execute("INSERT INTO mine VALUES ('written by this test')")
    # A second database of the same server does not see this one's table.
    with postgres_databases.database("other") as other, psycopg.connect(other) as connection:
        assert connection.execute("SELECT to_regclass('public.mine')").fetchone() == (None,)
    assert other != postgres_url


@pytest.mark.parametrize("attempt", [1, 2])
def test_what_a_test_leaves_is_gone_for_the_next(postgres_url: str, attempt: int) -> None:
    # Both attempts create the same table: the second would fail if the first's were still
    # there (the databases are dropped after each test and made from template0).
    with psycopg.connect(postgres_url) as connection:
        connection.execute("CREATE TABLE left_behind (attempt int)")
        connection.execute("INSERT INTO left_behind VALUES (%s)", (attempt,))


def test_the_server_is_durable_and_can_feed_a_standby(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        settings = dict(
            connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (["fsync", "full_page_writes", "synchronous_commit", "wal_level"],),
            ).fetchall()
        )
    assert settings == {
        "fsync": "on",
        "full_page_writes": "on",
        "synchronous_commit": "on",
        "wal_level": "replica",
    }


def test_the_default_collation_is_not_byte_order(postgres_url: str) -> None:
    # Like most production clusters: only an explicit COLLATE "C" gives the key order of
    # prepsync's files, so a store query that forgets it fails the tests here as it would there.
    if os.environ.get(pgutil.URL_ENV):
        pytest.skip("an existing server's collation is its own")
    with psycopg.connect(postgres_url) as connection:
        natural = connection.execute(
            "SELECT array_agg(v ORDER BY v) FROM (VALUES ('a'), ('B')) AS t(v)"
        ).fetchone()
        byte_order = connection.execute(
            "SELECT array_agg(v ORDER BY v COLLATE \"C\") FROM (VALUES ('a'), ('B')) AS t(v)"
        ).fetchone()
    assert byte_order == (["B", "a"],)
    assert natural == (["a", "B"],)


def test_a_killed_test_run_leaves_no_server_behind(tmp_path: Path) -> None:
    # The cluster's server dies with the process that started it, even on SIGKILL, so runs
    # killed by a timeout do not pile up servers on a shared machine.
    if os.environ.get(pgutil.URL_ENV):
        pytest.skip("uses its own cluster")
    script = textwrap.dedent(
        """
        import os, signal, sys
        sys.path.insert(0, sys.argv[1])
        import pgutil
        cluster = pgutil.Cluster(pgutil.find_bindir())
        cluster.start()
        print(cluster.process.pid, cluster.root, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == -9, run.stderr
    pid_text, root = run.stdout.split()
    pid = int(pid_text)
    try:
        # The postmaster's immediate shutdown takes a moment; it is a child of init now.
        for _ in range(600):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            status = Path(f"/proc/{pid}/status")
            if status.exists() and "State:\tZ" in status.read_text():
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"postgres {pid} still runs after its parent was killed")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_without_postgresql_the_cases_skip_on_one_line_or_fail_under_ci(tmp_path: Path) -> None:
    # A pytest run on a host with no PostgreSQL at all: no URL, and no server programs found.
    (tmp_path / "test_needs_pg.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('n', range(3))\n"
        "def test_needs(postgres_url, n):\n"
        "    pass\n"
        "def test_sqlite_only(store_url):\n"
        "    assert store_url is None or store_url.startswith('postgresql://')\n"
    )
    # The suite's conftest, on a host where find_bindir finds nothing (in every worker process).
    (tmp_path / "conftest.py").write_text(
        (Path(__file__).parent / "conftest.py").read_text()
        + "\npgutil.find_bindir = lambda: None\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (pgutil.URL_ENV, pgutil.BIN_ENV, "CI")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    # On two worker processes (-n 2), as make test and CI run the suite.
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-n", "2"]
    command.append(str(tmp_path))
    skipped = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    skip_lines = [line for line in skipped.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skip_lines) == 1, skipped.stdout
    assert "SKIPPED [4]" in skip_lines[0]
    assert "apt-get install postgresql" in skip_lines[0]
    assert pgutil.BIN_ENV in skip_lines[0] and pgutil.URL_ENV in skip_lines[0]
    assert "1 passed, 4 skipped" in skipped.stdout

    failed = subprocess.run(
        command, capture_output=True, text=True, env={**env, "CI": "true"}, cwd=tmp_path
    )
    assert failed.returncode == 1, failed.stdout
    assert "4 errors" in failed.stdout and "CI=true and no PostgreSQL" in failed.stdout


def test_store_url_runs_a_test_once_per_store(
    store_url: str | None, request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params["store_url"] == "sqlite":
        assert store_url is None  # no --database: the embedded default
        return
    assert store_url is not None and store_url.startswith("postgresql://")
    with psycopg.connect(store_url) as connection:
        assert connection.execute("SELECT current_database()").fetchone() == (
            store_url.rsplit("/", 1)[1],
        )
