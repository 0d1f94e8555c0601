"""A throwaway PostgreSQL server for the tests, the soak and the benches.

:func:`find_bindir` finds PostgreSQL's server programs (``initdb``, ``postgres``);
:class:`Cluster` makes a new cluster in a temporary directory and runs it on 127.0.0.1 at a free
port (and a unix socket in that directory) with durable settings and ``wal_level=replica``, as
production would; :func:`admin_url` decides where the tests' databases come from (an existing
server named by ``PREPSYNC_TEST_DATABASE_URL``, or such a cluster); :class:`Databases` hands out
fresh empty databases on it.

Nothing here needs pytest: ``bench/server_bench.py`` and ``tests/soak.py`` use it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BIN_ENV = "PREPSYNC_TEST_PG_BIN"
URL_ENV = "PREPSYNC_TEST_DATABASE_URL"

# Said once, on the one line that reports the skipped PostgreSQL cases.
HOW_TO_ENABLE = (
    "no PostgreSQL server programs found; to run them: `apt-get install postgresql`, or "
    f"{BIN_ENV}=<directory holding initdb and postgres>, or "
    f"{URL_ENV}=postgresql://<role that may create databases>@host/db"
)

# The settings a production server keeps (fsync, full-page writes, synchronous commit: nothing
# that trades durability for speed, so the measured speed is the one users get) and a WAL a
# standby or point-in-time recovery can use. The rest only fits a test server to a shared
# 2-core machine.
SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "wal_level": "replica",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "max_wal_size": "2GB",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
}


def _without_sanitizers() -> dict[str, str]:
    """This environment without the sanitizer runtime the debug test run preloads (``make
    test-asan``): it is meant for prepsync's core, and PostgreSQL's programs can hang under it."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")
    }


class PostgresUnavailable(Exception):
    """No PostgreSQL to test against; the message says how to get one."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None when there is none.

    ``PREPSYNC_TEST_PG_BIN`` wins (and must be right: a wrong one is an error, not a skip);
    then ``pg_config --bindir`` (the client-only ``libpq-dev`` has a ``pg_config`` whose bindir
    holds no ``initdb``, so it is checked), then Debian's ``/usr/lib/postgresql/<version>/bin``,
    newest version first, then ``initdb`` on the PATH.
    """

    def has_server(directory: Path) -> bool:
        return (directory / "initdb").is_file() and (directory / "postgres").is_file()

    configured = os.environ.get(BIN_ENV)
    if configured:
        if not has_server(Path(configured)):
            raise PostgresUnavailable(f"{BIN_ENV}={configured} holds no initdb and postgres")
        return Path(configured)
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            output = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                check=True,
                env=_without_sanitizers(),
            ).stdout
            candidates.append(Path(output.strip()))

    def version(path: str) -> tuple[int, ...]:
        found = re.search(r"/postgresql/([0-9.]+)/bin$", path)
        return tuple(int(part) for part in found.group(1).split(".") if part) if found else ()

    candidates += [
        Path(path)
        for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    ]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    return next((directory for directory in candidates if has_server(directory)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root, which initdb and postgres
    refuse; then the ``postgres`` account the package creates, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root and there is no postgres or nobody user")


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends the postmaster SIGQUIT (immediate
    shutdown, which ends its backends too) when the process that started it dies, so a test
    run killed with SIGKILL leaves no server behind on a shared machine."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)


class Cluster:
    """A new PostgreSQL cluster in a temporary directory, run by this process.

    ``start()`` runs ``initdb`` (UTF-8, C locale, trust authentication: it listens on 127.0.0.1
    and a unix socket only the server's user can reach) and starts ``postgres`` as a child that
    dies with this process; ``stop()`` shuts it down and removes the directory. When we are
    root, both run as the ``postgres`` user, who owns the directory.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _server_user()
        self.root: Path | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    @property
    def url(self) -> str:
        """The ``postgres`` database, as the superuser ``postgres``, over TCP."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as_server_user(self, command: list[str]) -> None:
        assert self.root is not None
        result = subprocess.run(
            command,
            cwd=self.root,
            capture_output=True,
            text=True,
            **self._identity(),
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}"
            )

    def _identity(self) -> dict[str, object]:
        """How to run PostgreSQL's programs: as the server's user, in an environment without
        the sanitizer runtime the debug test run preloads (``make test-asan``), which is
        meant for prepsync's core, not for PostgreSQL."""
        environment = _without_sanitizers()
        if self.user is None:
            return {"env": environment}
        home = {"HOME": self.user.pw_dir, "USER": self.user.pw_name}
        return {
            "env": {**environment, **home},
            "user": self.user.pw_uid,
            "group": self.user.pw_gid,
            "extra_groups": [],
        }

    def start(self, timeout: float = 60) -> None:
        # Not under pytest's tmp_path: its directories are private to root, and the server's
        # user must reach the unix socket's directory (whose path must stay short, too).
        self.root = Path(tempfile.mkdtemp(prefix="prepsync-pg-"))
        try:
            if self.user is not None:
                os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
            self._run_as_server_user(
                [
                    str(self.bindir / "initdb"),
                    "--pgdata",
                    str(self.data),
                    "--username",
                    "postgres",
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--no-sync",  # a throwaway cluster: its files need not survive a power cut
                    *self._locale_options(),
                ]
            )
            # A free port can be taken between the probe and the bind: try a few.
            for attempt in itertools.count():
                self.port = _free_port()
                try:
                    self._launch(timeout)
                    return
                except PostgresUnavailable:
                    if attempt == 4 or "could not bind" not in self._log_text():
                        raise
        except BaseException:
            self.stop()
            raise

    def _locale_options(self) -> list[str]:
        """A default collation that is not byte order, like most production clusters'
        (``en_US.UTF-8``): a query that forgets ``COLLATE "C"`` then sorts wrong here too.
        ICU's ``en-US`` (PostgreSQL 15+ built with ICU), else the C locale."""
        help_text = subprocess.run(
            [str(self.bindir / "initdb"), "--help"],
            capture_output=True,
            text=True,
            env=_without_sanitizers(),
        ).stdout
        if "--locale-provider" in help_text and "--with-icu" in self._configure_flags():
            return ["--locale", "C.UTF-8", "--locale-provider", "icu", "--icu-locale", "en-US"]
        return ["--no-locale"]

    def _configure_flags(self) -> str:
        pg_config = self.bindir / "pg_config"
        if not pg_config.is_file():
            return ""
        return subprocess.run(
            [str(pg_config), "--configure"],
            capture_output=True,
            text=True,
            env=_without_sanitizers(),
        ).stdout

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _launch(self, timeout: float) -> None:
        assert self.root is not None
        options = {
            **SETTINGS,
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
        }
        with (self.data / "postgresql.auto.conf").open("w") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in options.items())
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the tests does not reach it
                preexec_fn=_die_with_parent,
                **self._identity(),  # type: ignore[arg-type]
            )
        deadline = time.monotonic() + timeout
        while not self._accepts_connections():
            if self.process.poll() is not None:
                self.process = None
                raise PostgresUnavailable("postgres did not start: " + self._log_text()[-2000:])
            if time.monotonic() > deadline:
                raise PostgresUnavailable("postgres did not start in time: " + self._log_text())
            time.sleep(0.05)

    def _accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open sessions are ended), then removes everything."""
        if self.process is not None:
            if self.process.poll() is None:
                # The server runs as another user: signal the child we own, not by name.
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.send_signal(signal.SIGQUIT)
                    self.process.wait(30)
            self.process = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def admin_url() -> Iterator[str]:
    """A URL whose role may create databases: ``PREPSYNC_TEST_DATABASE_URL`` when set, else a
    new :class:`Cluster` for the duration (stopped on exit, Ctrl-C included).

    Raises :class:`PostgresUnavailable` when neither is possible.
    """
    try:
        import psycopg  # noqa: F401  (a missing driver is a reason to skip, said the same way)
    except ImportError as error:
        raise PostgresUnavailable(f"psycopg is not installed ({error}); {HOW_TO_ENABLE}") from None
    existing = os.environ.get(URL_ENV)
    if existing:
        yield existing
        return
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(HOW_TO_ENABLE)
    with Cluster(bindir) as cluster:
        yield cluster.url


def with_database(url: str, database: str) -> str:
    """``url`` naming ``database`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


class Databases:
    """Fresh databases on one server, each made from ``template0`` (so nothing a test leaves
    in ``template1`` or ``postgres`` leaks into the next) or copied from another, and dropped
    after."""

    def __init__(self, admin: str, prefix: str = "prepsync_test") -> None:
        self.admin = admin
        self.prefix = prefix
        self._numbers = itertools.count(1)
        # Two test runs against one PREPSYNC_TEST_DATABASE_URL must not share names.
        self._run = f"{os.getpid()}_{int(time.time()) % 100000}"

    def create(self, label: str = "", copy_of: str | None = None) -> tuple[str, str]:
        """A new database: its name and its URL. ``copy_of``: the URL of a database (on this
        server, with no connection open to it) whose contents the new one starts with, as a
        restored copy does; without it, empty."""
        import psycopg
        from psycopg import sql

        slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:20]
        name = f"{self.prefix}_{self._run}_{next(self._numbers)}" + (f"_{slug}" if slug else "")
        template = "template0" if copy_of is None else urlsplit(copy_of).path.lstrip("/")
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} ENCODING 'UTF8'").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return name, with_database(self.admin, name)

    def drop(self, name: str) -> None:
        """Drops ``name``, ending whatever connections a test left open on it."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def database(self, label: str = "", copy_of: str | None = None) -> Iterator[str]:
        name, url = self.create(label, copy_of)
        try:
            yield url
        finally:
            self.drop(name)


def main() -> int:
    """``python tests/pgutil.py``: proves a throwaway cluster starts here (CI runs it before
    the tests, so a host that cannot run PostgreSQL fails in one clear line).
    ``--bindir``: prints where the server programs are, or nothing (CI installs them then)."""
    import sys

    if sys.argv[1:] == ["--bindir"]:
        try:
            print(find_bindir() or "")
        except PostgresUnavailable:
            print("")
        return 0
    started = time.monotonic()
    try:
        with admin_url() as url:
            import psycopg

            with psycopg.connect(url) as connection:
                row = connection.execute("SHOW server_version").fetchone()
            where = "the server of " + URL_ENV if os.environ.get(URL_ENV) else str(find_bindir())
            assert row is not None
            print(
                f"PostgreSQL {row[0]} ({where}): up in {time.monotonic() - started:.1f} s",
                flush=True,
            )
    except PostgresUnavailable as error:
        print(f"PostgreSQL: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
