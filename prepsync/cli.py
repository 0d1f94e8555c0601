"""The command line (REFERENCE §6): every ``prepsync`` command's options and help, and how a
run's outcome becomes output and an exit status. The work is elsewhere: ``prepare`` runs
:func:`prepsync.pipeline.run_offline` or :func:`prepsync.sync.synchronize` and waits for the
verdict, ``sessions`` calls the API through :mod:`prepsync.operator`, ``serve`` starts
:mod:`prepsync.server`, ``demo`` :mod:`prepsync.demo`.

Every failure a user can cause is a PrepsyncError, printed as one line ``error: ...``; the exit
statuses are :mod:`prepsync.exit_status`'s (``--help`` lists them). Ctrl-C exits after the
cleanup has run.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from prepsync import __version__, exit_status
from prepsync.errors import PrepsyncError
from prepsync.exit_status import ExitStatus
from prepsync.logs import LOG_FORMATS
from prepsync.protocol import DEFAULT_SEPARATOR, DELETE, DONE, INSERT, MODES, UPDATE
from prepsync.report import ProgressBar, summary_lines, write_report
from prepsync.request import (
    DEFAULT_COMMAND_COLUMN,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_OPERATOR_RETRY_SECONDS,
    DEFAULT_RETRY_SECONDS,
    DEFAULT_UPLOAD_CHUNK_SIZE,
    DEFAULT_WAIT_TIMEOUT,
    MIB,
    PrepareRequest,
)
from prepsync.server.defaults import (
    DEFAULT_HOST,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_OPERATOR_PROFILE,
    DEFAULT_PORT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT,
    DEFAULT_TIMEOUT_KEEP_ALIVE,
)
from prepsync.sizes import parse_size

if TYPE_CHECKING:
    from prepsync.client import ApiClient
    from prepsync.sync import Delivery

log = logging.getLogger("prepsync")

VERBOSE = 5
LOG_LEVELS = {
    "verbose": VERBOSE,
    "debug": logging.DEBUG,
    "information": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
MIN_MEMORY_BUDGET = MIB

F = TypeVar("F", bound=Callable[..., Any])


def fail_cleanly(command: F) -> F:
    """Turn the errors a user can cause into one line and an exit status."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PrepsyncError as error:
            raise CliError(str(error)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(ExitStatus.INTERRUPTED)
        except MemoryError as error:
            raise CliError(f"out of memory: {error}") from None
        except OSError as error:
            raise CliError(_describe_os_error(error)) from None

    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    return run  # type: ignore[return-value]


def _describe_os_error(error: OSError) -> str:
    where = f" {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}".strip()


class CliError(click.ClickException):
    """A one-line ``error: ...`` on stderr and ExitStatus.ERROR (click would print ``Error:``)."""

    exit_code = ExitStatus.ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _memory_budget(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        size = parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if size < MIN_MEMORY_BUDGET:
        raise click.BadParameter(f"the memory budget must be at least {_mib(MIN_MEMORY_BUDGET)}")
    return size


def _mib(size: int) -> str:
    """A size as its option's default is spelled (in whole MiB), and read back by parse_size."""
    assert size % MIB == 0, size
    return f"{size // MIB}MiB"


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _configure_logging(level_name: str, log_format: str = "text") -> int:
    from prepsync.logs import configure

    logging.addLevelName(VERBOSE, "VERBOSE")
    level = LOG_LEVELS[level_name.lower()]
    configure(level, log_format.lower())
    return level


def _under(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


@click.group()
@click.version_option(__version__, prog_name="prepsync")
def main() -> None:
    """prepsync: Prepare-Synchronization for identity-management exports."""


def _prepare_options(function: F) -> F:
    options: Sequence[Callable[[F], F]] = (
        click.option("--connector", required=True, help="Connector whose mappings apply."),
        click.option("--agent", required=True, help="Agent name sent with the session."),
        click.option(
            "--synchronization-mode",
            "mode",
            required=True,
            type=click.Choice(MODES, case_sensitive=False),
        ),
        click.option(
            "--config",
            "config_path",
            type=click.Path(exists=True, path_type=Path),
            help="Identity Manager XML file or folder (required offline).",
        ),
        click.option(
            "--api-url",
            help="Server URL, or a bare host meaning https://host; without it nothing is sent.",
        ),
        click.option("--api-client-id", help="OAuth2 client id."),
        click.option(
            "--api-secret",
            envvar="PREPSYNC_API_SECRET",
            show_envvar=True,
            help="OAuth2 client secret.",
        ),
        click.option(
            "--sources-directory",
            default="ExportOutput",
            show_default=True,
            type=click.Path(path_type=Path),
            help="Relative to --temp-folder.",
        ),
        click.option(
            "--working-directory",
            default="Collect",
            show_default=True,
            type=click.Path(path_type=Path),
            help="Relative to --work-folder.",
        ),
        click.option(
            "--temp-folder", default="./Temp", show_default=True, type=click.Path(path_type=Path)
        ),
        click.option(
            "--work-folder", default="./Work", show_default=True, type=click.Path(path_type=Path)
        ),
        click.option(
            "--memory-budget",
            default=_mib(DEFAULT_MEMORY_BUDGET),
            show_default=True,
            callback=_memory_budget,
            help="Bound on the data buffers.",
        ),
        click.option(
            "--separator",
            default=DEFAULT_SEPARATOR,
            show_default=True,
            help="Field separator of the outputs, and of the sources unless a table's settings "
            "or a 'sep=X' first line say otherwise ('tab' for a tab).",
        ),
        click.option(
            "--encoding",
            help="Encoding of sources without a byte-order mark: a single-byte code page "
            "(windows-1252, latin-1, cp437...) or utf-16le/utf-16be/utf-32le/utf-32be "
            "[default: UTF-8; a byte-order mark always says what a file is].",
        ),
        click.option(
            "--skip-lines",
            default=0,
            show_default=True,
            type=click.IntRange(min=0),
            help="Lines before each source's header to drop (NumberOfLinesToSkip).",
        ),
        click.option(
            "--trim",
            default="",
            help="Characters trimmed from both ends of every header name and value, once "
            "unquoted, one character after the other in this order (ValuesToTrim).",
        ),
        click.option(
            "--table-settings",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="JSON file of per-table Encoding, Separator, NumberOfLinesToSkip and "
            "ValuesToTrim, shaped like appsettings.agent.json's Connections section; the "
            "options above are the defaults.",
        ),
        click.option(
            "--command-column",
            default=DEFAULT_COMMAND_COLUMN,
            show_default=True,
            help="Command column of a change file (case-insensitive).",
        ),
        click.option(
            "--log-level",
            default="Information",
            show_default=True,
            type=click.Choice([n.capitalize() for n in LOG_LEVELS], case_sensitive=False),
        ),
        click.option(
            "--log-format",
            default="text",
            show_default=True,
            type=click.Choice(LOG_FORMATS, case_sensitive=False),
            help="json: one JSON object per log line, for log shippers.",
        ),
        click.option(
            "--report",
            type=click.Path(path_type=Path),
            help="Write the run's summary as JSON here.",
        ),
        click.option(
            "--parallel",
            type=click.IntRange(min=1),
            help="Tables cleansed at once, sharing the budget [default: one per core].",
        ),
        click.option(
            "--upload-chunk-size",
            default=_mib(DEFAULT_UPLOAD_CHUNK_SIZE),
            show_default=True,
            callback=_size,
            help="Size of each upload request.",
        ),
        click.option(
            "--api-retry-seconds",
            default=DEFAULT_RETRY_SECONDS,
            show_default=True,
            type=float,
            help="Total time to keep retrying the server before giving up.",
        ),
        click.option(
            "--no-wait",
            is_flag=True,
            help="Return once the session is queued, without waiting for the server's verdict.",
        ),
        click.option(
            "--wait-timeout",
            default=DEFAULT_WAIT_TIMEOUT,
            show_default=True,
            type=click.FloatRange(min=0),
            help="Seconds to wait for the verdict before exiting with status "
            f"{int(ExitStatus.NO_VERDICT)}.",
        ),
    )
    for option in reversed(options):
        function = option(function)
    return function


@click.command("prepare", epilog=exit_status.help_text(exit_status.PREPARE))
@_prepare_options
@fail_cleanly
def prepare(
    connector: str,
    agent: str,
    mode: str,
    config_path: Path | None,
    api_url: str | None,
    api_client_id: str | None,
    api_secret: str | None,
    sources_directory: Path,
    working_directory: Path,
    temp_folder: Path,
    work_folder: Path,
    memory_budget: int,
    separator: str,
    encoding: str | None,
    skip_lines: int,
    trim: str,
    table_settings: Path | None,
    command_column: str,
    log_level: str,
    log_format: str,
    report: Path | None,
    parallel: int | None,
    upload_chunk_size: int,
    api_retry_seconds: float,
    no_wait: bool,
    wait_timeout: float,
) -> None:
    """Cleanse, sort and (incrementally) diff a connector's exported CSV files, and send them
    to the server when --api-url is given.

    Online, the run then waits for the server's verdict on its session (progress on stderr
    when it is a terminal); the baselines advance once the server accepted the commit,
    whatever the verdict.

    """
    from prepsync import config as configuration
    from prepsync import dialect, pipeline

    level = _configure_logging(log_level, log_format)
    separator = dialect.check_separator(separator, "--separator")
    defaults = dialect.ReadSettings(
        separator=separator, encoding=encoding, skip_lines=skip_lines, trim=tuple(trim)
    )
    per_table = dialect.load_table_settings(table_settings, defaults) if table_settings else {}
    if config_path is None and not api_url:
        raise click.UsageError("--config is required when no --api-url is given")
    if api_url is not None:
        from prepsync.client import parse_api_url

        api_url = parse_api_url(api_url)
    if api_url and not (api_client_id and api_secret):
        raise click.UsageError(
            "--api-url needs --api-client-id and --api-secret (or PREPSYNC_API_SECRET)"
        )
    request = PrepareRequest(
        connector=connector,
        mode=mode,
        sources_dir=_under(temp_folder, sources_directory),
        working_dir=_under(work_folder, working_directory),
        memory_budget=memory_budget,
        separator=separator,
        command_column=command_column,
        parallel=parallel,
        encoding=encoding,
        skip_lines=skip_lines,
        trim=defaults.trim,
        table_settings=per_table,
    )
    tables = configuration.load_tables(config_path, connector) if config_path else None
    progress = ProgressBar() if sys.stderr.isatty() and level <= logging.INFO else None
    delivery = None
    status = ExitStatus.OK
    try:
        if api_url:
            from prepsync.client import ApiClient, RetryPolicy
            from prepsync.sync import forget_delivered, synchronize

            assert api_client_id and api_secret  # checked above
            with ApiClient(
                api_url,
                api_client_id,
                api_secret,
                chunk_size=upload_chunk_size,
                retry=RetryPolicy(total_seconds=api_retry_seconds),
            ) as api:
                run, delivery = synchronize(
                    api, request, agent=agent, tables=tables, progress=progress
                )
                if progress:
                    progress.close()
                for line in summary_lines(run):
                    click.echo(line)
                if not no_wait:
                    status_line = StatusLine() if progress else None
                    try:
                        status = _await_verdict(api, delivery, wait_timeout, status_line)
                    finally:
                        if status_line:
                            status_line.close()
                    if status == ExitStatus.BLOCKED:
                        _print_review_commands(delivery, api_url, api_client_id)
                    if status != ExitStatus.NO_VERDICT and not delivery.resumed:
                        forget_delivered(request.working_dir, delivery.session_id)
        else:
            assert tables is not None
            run = pipeline.run_offline(tables, request, progress=progress)
            if progress:
                progress.close()
            for line in summary_lines(run):
                click.echo(line)
    finally:
        if progress:
            progress.close()
    if delivery and delivery.resumed:
        click.echo(
            f"session {delivery.session_id}: {delivery.state}, committed by an interrupted run "
            "from these same sources: nothing sent again"
        )
    elif delivery:
        click.echo(
            f"session {delivery.session_id}: {delivery.state}, {len(delivery.files)} file(s) sent"
        )
    if report:
        write_report(report, run, delivery)
    if status != ExitStatus.OK:
        sys.exit(status)


class StatusLine:
    """One line on stderr, rewritten in place (stderr is a terminal)."""

    def __init__(self) -> None:
        self._last = ""

    def __call__(self, text: str) -> None:
        sys.stderr.write("\r" + text.ljust(len(self._last)))
        sys.stderr.flush()
        self._last = text

    def close(self) -> None:
        if self._last:
            sys.stderr.write("\r" + " " * len(self._last) + "\r")
            sys.stderr.flush()
            self._last = ""


def _await_verdict(
    api: ApiClient, delivery: Delivery, timeout: float, status_line: StatusLine | None
) -> ExitStatus:
    """Wait for the session's verdict, say it on stderr unless done; the exit status."""
    from prepsync.sync import NoVerdict, await_verdict

    try:
        await_verdict(api, delivery, timeout=timeout, progress=status_line)
    except NoVerdict as waiting:
        if status_line:
            status_line.close()
        click.echo(str(waiting), err=True)
        return ExitStatus.NO_VERDICT
    if status_line:
        status_line.close()
    if delivery.state != DONE:
        reason = delivery.reason or "no reason given"
        advice = (delivery.server_session or {}).get("advice")
        if isinstance(advice, str) and advice:
            reason += f" ({advice})"
        click.echo(f"session {delivery.session_id} {delivery.state}: {reason}", err=True)
    return exit_status.VERDICTS[delivery.state]


def _print_review_commands(delivery: Delivery, api_url: str, client_id: str) -> None:
    """How an operator reviews and settles a blocked session (secret from the environment)."""
    session_id = delivery.session_id
    options = f"--api-url {shlex.quote(api_url)} --api-client-id {shlex.quote(client_id)}"
    tables = (delivery.server_session or {}).get("tables")
    names = sorted(tables) if isinstance(tables, dict) else []
    lines = [
        "review it with an operator's credentials (PREPSYNC_API_SECRET set; unless client "
        f"{client_id} has the server's operator profile, give an operator client's id):",
        f"  prepsync sessions show {session_id} {options}",
        *(
            f"  prepsync sessions changes {session_id} --table {shlex.quote(name)} {options}"
            for name in names
        ),
        "then apply it anyway, or reject it (a rejected incremental session's changes are lost:",
        "the next synchronization of the connector must then be complete):",
        f"  prepsync sessions force {session_id} {options}",
        f"  prepsync sessions cancel {session_id} {options}",
    ]
    if not names:
        lines.insert(2, f"  prepsync sessions changes {session_id} {options}")
    for line in lines:
        click.echo(line, err=True)


main.add_command(prepare)
prepare_main = prepare


# ------------------------------------------------------------------------------ sessions


@main.group(epilog=exit_status.help_text(exit_status.SESSIONS))
def sessions() -> None:
    """Review and settle the server's sessions: list, show, changes, force, cancel.

    Every command takes the same --api-url, --api-client-id and --api-secret (or
    PREPSYNC_API_SECRET) as prepare. list and show work for any client allowed on the
    connector (show: its own sessions); changes, force and cancel need an operator's
    credentials: a client whose Profile is the server's operator profile (serve
    --operator-profile, Administrator by default). A delivering client may only cancel its own
    session before its commit.
    """


def _api_options(function: F) -> F:
    options: Sequence[Callable[[F], F]] = (
        click.option("--api-url", required=True, help="Server URL (or bare host: https)."),
        click.option("--api-client-id", required=True, help="OAuth2 client id."),
        click.option(
            "--api-secret",
            envvar="PREPSYNC_API_SECRET",
            show_envvar=True,
            required=True,
            help="OAuth2 client secret.",
        ),
        click.option(
            "--api-retry-seconds",
            default=DEFAULT_OPERATOR_RETRY_SECONDS,
            show_default=True,
            type=float,
            help="Total time to keep retrying the server before giving up.",
        ),
    )
    for option in reversed(options):
        function = option(function)
    return function


def _operator_api(
    api_url: str, api_client_id: str, api_secret: str, api_retry_seconds: float
) -> ApiClient:
    from prepsync.client import ApiClient, RetryPolicy, parse_api_url

    return ApiClient(
        parse_api_url(api_url),
        api_client_id,
        api_secret,
        retry=RetryPolicy(total_seconds=api_retry_seconds),
    )


@contextlib.contextmanager
def _operator_action(action: str) -> Iterator[None]:
    """A 403 to an operator's action (force, cancel, changes) says what is needed: the
    credentials of a client whose Profile is the server's operator profile."""
    from prepsync.errors import ServerError

    try:
        yield
    except ServerError as error:
        if error.status != 403:
            raise
        raise CliError(
            f"{action} needs an operator's credentials (--api-client-id/--api-secret of a "
            f"client whose Profile is the server's operator profile): {error}"
        ) from None


@sessions.command("list")
@click.option("--connector", required=True, help="Connector whose sessions are listed.")
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(1, 10_000), help="Newest N."
)
@_api_options
@fail_cleanly
def list_sessions(connector: str, limit: int, **api: Any) -> None:
    """The connector's sessions, newest first: state, mode, agent, age, changes, reason."""
    import time

    from prepsync.operator import session_table

    with _operator_api(**api) as client:
        listing = client.sessions(connector, limit)
    for line in session_table(listing, time.time()):
        click.echo(line)


@sessions.command("show")
@click.argument("session_id", metavar="ID")
@_api_options
@fail_cleanly
def show_session(session_id: str, **api: Any) -> None:
    """A session: its state and reason, per-table counts and the thresholds it crossed."""
    import time

    from prepsync.operator import session_detail

    with _operator_api(**api) as client:
        session = client.session(session_id)
    for line in session_detail(session, time.time()):
        click.echo(line)


@sessions.command("changes")
@click.argument("session_id", metavar="ID")
@click.option("--table", help="The table (needed when the session carries several).")
@click.option(
    "--command",
    "command_name",
    type=click.Choice([INSERT, UPDATE, DELETE], case_sensitive=False),
    help="Only this kind of change.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="At most N rows (the next page is named)."
)
@click.option("--after", help="Start after this key (as the previous page named it).")
@_api_options
@fail_cleanly
def session_changes(
    session_id: str,
    table: str | None,
    command_name: str | None,
    limit: int | None,
    after: str | None,
    **api: Any,
) -> None:
    """The changes the session makes (or, blocked, would make if forced) against the store
    as it is now, as CSV on stdout: command, then the table's columns, in key order."""
    from prepsync.operator import write_changes

    out = sys.stdout.buffer
    with _operator_action("reading a session's changes"), _operator_api(**api) as client:
        next_after = write_changes(
            client,
            session_id,
            out,
            table=table,
            command=command_name.lower() if command_name else None,
            limit=limit,
            after=after,
        )
    out.flush()
    if next_after is not None:
        click.echo(f"more changes follow: add --after {shlex.quote(next_after)}", err=True)


@sessions.command("force")
@click.argument("session_id", metavar="ID")
@_api_options
@fail_cleanly
def force_session(session_id: str, **api: Any) -> None:
    """Apply a blocked session anyway: it is queued again with its thresholds off."""
    with _operator_action("forcing a session"), _operator_api(**api) as client:
        session = client.force(session_id)
    click.echo(f"session {session_id}: {session.get('state')} (forced)")


@sessions.command("cancel")
@click.argument("session_id", metavar="ID")
@_api_options
@fail_cleanly
def cancel_session(session_id: str, **api: Any) -> None:
    """Reject an open, queued or blocked session: nothing of it is applied. A cancelled
    incremental session's changes are lost (the agent's baselines already moved): the next
    synchronization of its connector must be complete."""
    with _operator_action("cancelling this session"), _operator_api(**api) as client:
        session = client.cancel(session_id)
    click.echo(f"session {session_id}: {session.get('state')}")


def _server_option(*names: str, **attributes: Any) -> Callable[[F], F]:
    """A ``serve`` option, also read from ``PREPSYNC_<NAME>`` (a service unit or a container
    sets the environment, and a secret-free command line is easier to share)."""
    long_name = next(name for name in names if name.startswith("--"))
    envvar = "PREPSYNC_" + long_name[2:].upper().replace("-", "_")
    return click.option(*names, envvar=envvar, show_envvar=True, **attributes)


@main.command(epilog=exit_status.help_text(exit_status.SERVE))
@_server_option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="XML file or folder: mappings, thresholds and OpenIdClients.",
)
@_server_option(
    "--data-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Where the server keeps its store and the sessions' files.",
)
@_server_option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@_server_option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
@_server_option(
    "--session-timeout",
    default=DEFAULT_SESSION_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds after which an idle open session is abandoned.",
)
@_server_option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"], case_sensitive=False),
)
@_server_option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    help="json: one JSON object per line, for log shippers.",
)
@_server_option(
    "--ssl-certfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve HTTPS with this certificate chain (PEM); needs --ssl-keyfile.",
)
@_server_option(
    "--ssl-keyfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The certificate's private key (PEM, unencrypted).",
)
@_server_option(
    "--forwarded-allow-ips",
    help="Behind a reverse proxy: comma-separated addresses (or *) whose X-Forwarded-For "
    "and X-Forwarded-Proto are trusted. Unset: those headers are ignored.",
)
@_server_option(
    "--timeout-keep-alive",
    default=DEFAULT_TIMEOUT_KEEP_ALIVE,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds an idle keep-alive connection stays open.",
)
@_server_option(
    "--read-timeout",
    default=DEFAULT_READ_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a client has to send a request's headers, and the longest pause allowed "
    "in its body; then the connection is closed.",
)
@_server_option(
    "--operator-profile",
    default=DEFAULT_OPERATOR_PROFILE,
    show_default=True,
    help="The OpenIdClient Profile whose clients may force, cancel and read the changes of "
    "any session; other clients only deliver (and cancel their own session before its commit).",
)
@_server_option(
    "--max-connections",
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Open connections at most (fewer if the file limit is lower); past it, the "
    "connection idle the longest is closed.",
)
@_server_option(
    "--database",
    default=None,
    metavar="postgresql://...",
    help="Keep sessions and rows in this PostgreSQL database, shared by every server process "
    "given the same URL and the same --data-dir (default: SQLite files in --data-dir, one "
    "process).",
)
@fail_cleanly
def serve(config_path: Path, data_dir: Path, **options: Any) -> None:
    """Run the reference server: it issues tokens to the configuration's OpenID clients, takes
    each agent run as a session (chunked uploads, then a commit), applies committed sessions
    one at a time in opening order to its store (SQLite in --data-dir, or PostgreSQL with
    --database, shared by several server processes), blocks a session that crosses a
    threshold until an operator forces or cancels it, and serves the stored tables as CSV.
    The status page is at / , health at /healthz, metrics at /metrics.

    Every option may also be set by the environment variable shown with it.
    """
    from prepsync.server import serve as run_server
    from prepsync.server.app import ListenError

    options["log_level"] = options["log_level"].lower()
    options["log_format"] = options["log_format"].lower()
    try:
        run_server(config_path, data_dir, **options)
    except ListenError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(ExitStatus.LISTEN_FAILURE)


@main.command("hash-secret")
@fail_cleanly
def hash_secret_command() -> None:
    """Print the HashedSecret of a client secret, for its <OpenIdClient> element.

    The secret is read from standard input (one line; a pipe or a file), or asked for without
    echo when standard input is a terminal: never from an argument, which other users of the
    machine could see in the process list.
    """
    from prepsync.server.clients import hash_secret

    if sys.stdin.isatty():
        secret = click.prompt("Secret", hide_input=True, confirmation_prompt=True, err=True)
    else:
        secret = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not secret:
        raise CliError("the secret is empty")
    click.echo(hash_secret(secret))


@main.command()
@fail_cleanly
def demo() -> None:
    """Run a complete then an incremental synchronization on a bundled sample."""
    from prepsync.demo import run_demo

    run_demo(click.echo)
