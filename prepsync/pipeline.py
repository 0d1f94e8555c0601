"""The Python API of prepsync: cleanse one table, or every table of a connector (REFERENCE §3-§5).

The native engine does the row work; this module decides which columns, which files and what
happens on failure:

- outputs are written under temporary names and renamed only once every table of the run has
  succeeded, so a failed run leaves no half-written output and the previous outputs intact;
- spill files live in a private directory under the working directory, removed on success, on
  failure and on Ctrl-C;
- the baseline (``<sources>/previous/<table>.sorted.csv``) moves only through
  :func:`advance_baselines`, which the caller runs after the outputs were accepted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prepsync import _cleanse
from prepsync.dialect import ReadSettings
from prepsync.errors import BaselineError, InputError, UsageError
from prepsync.private import DIR_MODE, make_dirs
from prepsync.protocol import (
    COMMAND_COLUMN,
    DELTA_SUFFIX,
    DUPLICATES_SUFFIX,
    INCREMENTAL,
    NULLPK_SUFFIX,
    SORTED_SUFFIX,
    csv_record,
)
from prepsync.request import MIB, PrepareRequest, TableJob
from prepsync.sizes import format_size
from prepsync.staging import (
    StagedFiles,
    crash_point,
    link_or_copy,
    remove_leftovers,
    require_lock,
    spill_directory,
    temp_name,
    working_lock,
    write_synced,
)

if TYPE_CHECKING:
    from prepsync.config import TableSpec

log = logging.getLogger("prepsync")

MERGE_STEP_ROWS = 65536
# The export's pages are dropped from the page cache behind the read position, this many bytes
# at a time (see _run_engine).
INPUT_RELEASE_STEP = 16 * MIB

# Output kinds and the suffix each adds to the table name.
SUFFIXES = {
    "sorted": SORTED_SUFFIX,
    "nullpk": NULLPK_SUFFIX,
    "duplicates": DUPLICATES_SUFFIX,
    "delta": DELTA_SUFFIX,
}


def sent_kind(mode: str) -> str:
    """The output that goes to the server: each table's delta in incremental mode (a change
    file's kept rows, or the join's), else its ``.sorted.csv``."""
    return "delta" if mode.lower() == INCREMENTAL else "sorted"


#: progress(table, phase, done, total): phase "read" counts bytes, "write" counts rows.
Progress = Callable[[str, str, int, int], None]


class Sender(Protocol):
    """Told of each table's file for the server (its ``.sorted.csv``, or its delta in
    incremental mode) while it is written, so it can go out before the run ends. Called from
    the tables' threads; ``index`` is the table's place in the run."""

    def writing(self, index: int, temp: Path, name: str) -> None:
        """The file is being written at ``temp`` (its header is in); ``name`` is its final
        name. Appended to with write(2) only, never rewritten, until :meth:`written`."""

    def written(self, index: int) -> None:
        """The file is complete (not yet renamed: the run may still fail)."""


@dataclass
class TableResult:
    """What one table's cleansing did; every count is of data rows (no header)."""

    table: str
    source: str
    change_file: bool = False
    rows_read: int = 0
    kept: int = 0
    null_keys: int = 0
    duplicates: int = 0
    inserts: int = 0
    updates: int = 0
    deletes: int = 0
    merges: int = 0
    runs: int = 0
    merge_passes: int = 0
    #: Bytes written to the engine's run files (every merge pass included): what the table
    #: cost in spill, beside the outputs.
    spill_bytes: int = 0
    seconds: float = 0.0
    #: Wall and CPU seconds of each engine phase (``_cleanse.PHASE_NAMES``): read (and parse),
    #: sort, spill, merge (intermediate passes), join (the final pass into the outputs), write.
    phase_seconds: dict[str, float] = field(default_factory=dict)
    phase_cpu_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss: int = 0
    outputs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ColumnPlan:
    """How a source header maps onto a table's outputs (:func:`plan_columns`): the engine's
    columns, and what it does with a change file."""

    kept_names: list[str]  # the kept columns as the source spells them, in source order
    out_cols: list[int]  # source column of each output column (the command first, if any)
    key_cols: list[int]  # source columns of the key, in key order
    command_col: int  # source column of the command, -1 for a full extract
    baseline_key_cols: list[int]  # key columns' positions among the kept columns
    #: A change file in initial or complete mode: replayed from empty into a full extract (its
    #: .sorted.csv, without the command, sent and made the baseline). In incremental mode a
    #: change file is already a delta: its kept rows are the .sorted.delta.csv.
    replay: bool = False

    @property
    def change_file(self) -> bool:
        """A change file (the source has a command column): the last row of a key wins."""
        return self.command_col >= 0

    @property
    def change_names(self) -> list[str]:
        """Header of the files that carry the command: always spelled ``command``."""
        return [COMMAND_COLUMN, *self.kept_names] if self.change_file else self.kept_names


@dataclass(frozen=True)
class EngineFiles:
    """Where one table's engine writes, and the baseline it joins: descriptors the caller
    opened and closes (the engine writes and reads them, never closes them)."""

    spill_dir: Path  # its sorted runs (their names are per engine: one folder per engine)
    sorted_fd: int  # the kept rows: the .sorted.csv, or an incremental change file's delta
    nullpk_fd: int
    duplicates_fd: int
    delta_fd: int = -1  # the join's delta; -1 unless a baseline is joined
    baseline_fd: int = -1  # the baseline at its start, when joined; else -1


def peak_rss() -> int:
    """The process's peak resident memory in bytes (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def format_row(values: Sequence[str], separator: str) -> bytes:
    """One output line, UTF-8, LF-terminated: :func:`prepsync.protocol.csv_record`'s rule."""
    return (csv_record(values, separator) + "\n").encode("utf-8")


def find_source(sources_dir: Path, table: str) -> Path:
    """``<sources>/<table>.csv``: the exact name wins, else the one name matching it
    case-insensitively; several such names are an error naming them all (picking one would
    silently drop the other's data), and so is a match that is not a regular file."""
    exact = sources_dir / f"{table}.csv"
    if os.path.lexists(exact):
        _check_regular_file(exact)
        return exact
    wanted = exact.name.casefold()
    try:
        matches = sorted(
            entry for entry in sources_dir.iterdir() if entry.name.casefold() == wanted
        )
    except FileNotFoundError:
        matches = []
    except OSError as error:
        raise InputError(sources_dir, f"cannot list the folder: {error.strerror}") from None
    if not matches:
        raise InputError(exact, "file not found")
    if len(matches) > 1:
        names = ", ".join(entry.name for entry in matches)
        raise InputError(
            sources_dir,
            f"{len(matches)} files match table {table} case-insensitively ({names}); keep only one",
        )
    _check_regular_file(matches[0])
    return matches[0]


def _check_regular_file(path: Path) -> None:
    """An InputError saying what ``path`` is when it is not a readable regular file (a FIFO
    would block the read forever; a directory or a dangling link is not "missing")."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(
                path, f"is a symbolic link to {os.readlink(path)}, which does not exist"
            ) from None
        raise InputError(path, "file not found") from None
    except OSError as error:
        raise InputError(path, f"cannot read: {error.strerror}") from None
    if stat.S_ISREG(mode):
        return
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    kind = next((name for test, name in kinds if test(mode)), None)
    raise InputError(path, f"is {kind}, not a regular file" if kind else "is not a regular file")


def plan_columns(
    header: Sequence[str],
    job: TableJob,
    *,
    source: str | None = None,
    offsets: Sequence[int] | None = None,
    line: int = 1,
) -> ColumnPlan:
    """Check a source header against the table's configuration.

    Only the names prepsync reads must be unambiguous: a kept column or the command column
    found twice (case-insensitively) is an error; other names may be empty or repeated. A
    command column that is also a kept column is data, and the file a full extract.
    ``source`` (default: the job's), ``offsets`` (each name's byte offset) and ``line`` place
    errors in the file.
    """
    spec, command_column = job.spec, job.command_column
    separator = job.read_settings.separator
    if source is None:
        source = str(job.source)
    at = list(offsets) if offsets is not None else [0] * len(header)
    wanted = {name.casefold() for name in spec.columns}
    folded_command = command_column.casefold()
    read = wanted | {folded_command}
    seen: dict[str, int] = {}
    for index, name in enumerate(header):
        folded = name.casefold()
        if folded not in read:
            continue
        if folded in seen:
            raise InputError(source, f"duplicated header name '{name}'", line, at[index])
        seen[folded] = index

    for name in spec.columns:
        if name.casefold() not in seen:
            problem = f"column '{name}' is missing from the header"
            other = _other_separator(header, spec, separator)
            if other is not None:
                shown = "tabs" if other == "\t" else f"'{other}'"
                problem += (
                    f" (the header splits on {shown} instead: set --separator "
                    f"{'tab' if other == chr(9) else repr(other)}, or the table's Separator)"
                )
            raise InputError(source, problem, line, at[0])
    kept = [i for i, name in enumerate(header) if name.casefold() in wanted]

    command_col = -1
    if folded_command in seen and folded_command not in wanted:
        command_col = seen[folded_command]

    if spec.key is None:
        key_cols = list(kept)  # association table: every kept column, in source order
    else:
        key_cols = [seen[name.casefold()] for name in spec.key]
    return ColumnPlan(
        kept_names=[header[i] for i in kept],
        out_cols=([command_col] if command_col >= 0 else []) + kept,
        key_cols=key_cols,
        command_col=command_col,
        baseline_key_cols=[kept.index(i) for i in key_cols],
        replay=command_col >= 0 and job.mode != INCREMENTAL,
    )


#: Separators files are written with, tried when a header lacks a column.
LIKELY_SEPARATORS = (",", ";", "\t", "|")


def _other_separator(header: Sequence[str], spec: TableSpec, separator: str) -> str | None:
    """The likely separator other than ``separator`` that splits the header into names holding
    every column the table reads, if there is one: the file was written with it."""
    wanted = {name.casefold() for name in spec.columns}
    text = separator.join(header)
    for other in LIKELY_SEPARATORS:
        if other == separator or other not in text:
            continue
        names = {name.strip().strip('"').casefold() for name in text.split(other)}
        if wanted <= names:
            return other
    return None


def _check_baseline_header(job: TableJob, baseline: Path, plan: ColumnPlan) -> None:
    if not baseline.is_file():
        raise BaselineError(job.table, f"no baseline {baseline}")
    header = _baseline_header(job, baseline)
    if [name.casefold() for name in header] != [name.casefold() for name in plan.kept_names]:
        raise BaselineError(job.table, "baseline header differs from the kept columns")


def _baseline_header(job: TableJob, baseline: Path) -> list[str]:
    """The baseline's header, read with the outputs' separator; a CSV error is the table's
    BaselineError."""
    try:
        header, _, _ = _cleanse.read_header(
            str(baseline),
            job.separator.encode(),
            job.memory_budget,
            budget_shares=job.budget_shares,
        )
    except InputError as error:
        raise BaselineError(
            job.table, f"baseline {baseline}, line {error.line}: {error.problem}"
        ) from None
    return header


def stage_table(
    job: TableJob,
    out_dir: Path,
    staged: StagedFiles,
    *,
    spill_dir: Path | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    sending: Callable[[Path, str], None] | None = None,
) -> TableResult:
    """Cleanse one table into files staged in ``staged`` (committed by the caller).

    The other parameters are the run's, not the table's: the spill folder (default
    ``out_dir``), progress, the stop signal of a run whose earlier table failed, and
    ``sending(temp, name)``, told where the file for the server is written once its header is
    in.
    """
    started = time.monotonic()
    source_name = str(job.source)
    _check_regular_file(job.source)
    empty_header: Path | None = None
    read = job
    if job.source.stat().st_size == 0:
        # PowerShell writes nothing at all when a query returns nothing: a table with no rows.
        names = _empty_table_header(job)
        empty_header = Path(spill_dir or out_dir) / f"{job.table}.empty-source.csv"
        empty_header.write_bytes(format_row(names, job.separator))
        # The engine reads that header as the table's source (plain UTF-8, the outputs'
        # separator); results and messages still name the real source.
        read = replace(job, source=empty_header, settings=ReadSettings(separator=job.separator))
        log.info("%s: %s is empty (0 bytes): a table with no rows", job.table, source_name)
    try:
        return _stage_read(
            read,
            source_name,
            out_dir,
            staged,
            spill_dir=spill_dir,
            progress=progress,
            should_stop=should_stop,
            sending=sending,
            started=started,
        )
    finally:
        if empty_header is not None:
            empty_header.unlink(missing_ok=True)


def _empty_table_header(job: TableJob) -> list[str]:
    """The header of a table whose source is 0 bytes: the baseline's, so that its rows compare
    with the baseline's, else the mapped columns in configuration order."""
    if job.baseline is None or not job.baseline.is_file():
        return list(job.spec.columns)
    return _baseline_header(job, job.baseline)


def _stage_read(
    job: TableJob,
    source_name: str,
    out_dir: Path,
    staged: StagedFiles,
    *,
    spill_dir: Path | None,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    sending: Callable[[Path, str], None] | None,
    started: float,
) -> TableResult:
    settings = job.read_settings
    separator, mode, spec, baseline = job.separator, job.mode, job.spec, job.baseline
    header, offsets, header_line_number = _cleanse.read_header(
        str(job.source),
        separator.encode(),
        job.memory_budget,
        budget_shares=job.budget_shares,
        settings=settings,
    )
    plan = plan_columns(header, job, source=source_name, offsets=offsets, line=header_line_number)
    del header, offsets  # a wide header's names are not needed past this point
    result = TableResult(table=spec.name, source=source_name, change_file=plan.change_file)
    joining = mode == INCREMENTAL and not plan.change_file
    if joining:
        if baseline is None:
            raise BaselineError(spec.name, "no baseline given")
        _check_baseline_header(job, baseline, plan)
    # An incremental change file has no full extract to sort (nor to become a baseline).
    replay = plan.replay
    main_kind = "delta" if plan.change_file and not replay else "sorted"

    change_line = format_row(plan.change_names, separator)
    paths = {kind: out_dir / f"{spec.name}{suffix}" for kind, suffix in SUFFIXES.items()}
    fds = {
        main_kind: staged.create(
            paths[main_kind], format_row(plan.kept_names, separator) if replay else change_line
        ),
        "nullpk": staged.create(paths["nullpk"], change_line),
        "duplicates": staged.create(paths["duplicates"], change_line),
    }
    if joining:
        fds["delta"] = staged.create(
            paths["delta"], format_row([COMMAND_COLUMN, *plan.kept_names], separator)
        )
    result.outputs = {kind: str(paths[kind]) for kind in fds}
    if sending is not None:
        sent = paths[sent_kind(mode)]
        sending(temp_name(sent), sent.name)

    baseline_file = open(baseline, "rb") if joining and baseline is not None else None  # noqa: SIM115
    try:
        files = EngineFiles(
            spill_dir=spill_dir or out_dir,
            sorted_fd=fds[main_kind],
            nullpk_fd=fds["nullpk"],
            duplicates_fd=fds["duplicates"],
            delta_fd=fds["delta"] if joining else -1,
            baseline_fd=baseline_file.fileno() if baseline_file else -1,
        )
        engine = _cleanse.Cleanser(job, plan, files)
        try:
            _run_engine(engine, job, progress, should_stop)
            stats = engine.stats()
            encoding = engine.encoding_read()
            if encoding not in (None, "UTF-8"):
                log.info("%s: %s read as %s", spec.name, source_name, encoding)
        finally:
            engine.close()
    finally:
        if baseline_file:
            baseline_file.close()
    # The engine's stats() names every counter once; TableResult has a field of each name.
    for name, value in stats.items():
        setattr(result, name, value)
    result.seconds = time.monotonic() - started
    result.peak_rss = peak_rss()
    log.debug(
        "%s: %d rows read, %d kept, %d null keys, %d duplicates (%d runs) in %.2f s",
        spec.name,
        result.rows_read,
        result.kept,
        result.null_keys,
        result.duplicates,
        result.runs,
        result.seconds,
    )
    return result


def _run_engine(
    engine: _cleanse.Cleanser,
    job: TableJob,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    source, table = job.source, job.table
    block = job.read_block or _cleanse.io_block(job.memory_budget)

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise _Stopped(table)

    total = source.stat().st_size
    done = 0
    released = 0
    with open(source, "rb", buffering=0) as reader:
        fd = reader.fileno()
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        # The engine reads into its own buffer: no copy through Python. Ctrl-C is seen
        # between blocks.
        while got := engine.read_from(fd, block):
            check_stop()
            done += got
            if done - released >= INPUT_RELEASE_STEP:
                # The export is read once: its pages, dropped as soon as read, are the ones the
                # spill runs written meanwhile take, rather than fresh ones or ones reclaim
                # takes from other files (docs/DESIGN.md, "The export leaves the page cache").
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, released, done - released, os.POSIX_FADV_DONTNEED)
                released = done
            if progress:
                progress(table, "read", done, total)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, released, 0, os.POSIX_FADV_DONTNEED)  # the rest, to the end
    engine.finish_input()
    rows = engine.stats()["rows_read"]
    written = 0
    while not engine.merge_step(MERGE_STEP_ROWS):
        check_stop()
        written += MERGE_STEP_ROWS
        if progress:
            progress(table, "write", min(written, rows), rows)
    if progress:
        progress(table, "write", rows, rows)


def prepare_table(job: TableJob, out_dir: Path) -> TableResult:
    """Cleanse one table into ``out_dir`` (REFERENCE §3-§4); outputs appear only on success."""
    staged = StagedFiles(out_dir)
    try:
        with spill_directory(out_dir) as spill:
            result = stage_table(job, out_dir, staged, spill_dir=spill)
        staged.commit()
        return result
    finally:
        staged.discard()


@dataclass
class RunResult:
    """One prepare run over every table of a connector."""

    request: PrepareRequest
    tables: list[TableResult]
    seconds: float
    peak_rss: int
    # Legal but suspicious outcomes, each logged as a warning when found: {"table", "kind",
    # "message", ...}; kind "shrink" adds "rows" and "baseline_rows".
    warnings: list[dict[str, object]] = field(default_factory=list)
    commit_seconds: float = 0.0  # flushing the outputs to disk and renaming them into place

    def to_json(self) -> dict[str, object]:
        return {
            "connector": self.request.connector,
            "mode": self.request.mode,
            "memory_budget": self.request.memory_budget,
            "seconds": self.seconds,
            "commit_seconds": self.commit_seconds,
            "peak_rss": self.peak_rss,
            "tables": [table.to_json() for table in self.tables],
            "warnings": self.warnings,
        }


#: Beside each baseline, ``<table>.rows.json`` = {"rows": N, "bytes": S}: the baseline's row
#: count, so that comparing a run with it costs nothing. Trusted only while the baseline still
#: has S bytes; "rows" is null when the run that advanced it did not know its count.
BASELINE_ROWS_SUFFIX = ".rows.json"


def baseline_rows(baseline: Path) -> int:
    """Data rows of a baseline: from its sidecar, else by counting its line ends (a value
    holding a line break then counts twice: fine for a warning, not for arithmetic)."""
    size = baseline.stat().st_size
    sidecar = baseline.with_name(
        baseline.name.removesuffix(SUFFIXES["sorted"]) + BASELINE_ROWS_SUFFIX
    )
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        recorded = json.loads(sidecar.read_text(encoding="utf-8"))
        if recorded["bytes"] == size and isinstance(recorded["rows"], int):
            return int(recorded["rows"])
    line_ends = 0
    with open(baseline, "rb") as reader:
        while block := reader.read(MIB):
            line_ends += block.count(b"\n")
    return max(0, line_ends - 1)  # the header


def shrink_warning(result: TableResult, baseline: Path) -> dict[str, object] | None:
    """A warning when a full extract kept fewer than half its baseline's rows: legal (a header-
    only file is an empty table) but the usual sign of a truncated or failed export."""
    if "sorted" not in result.outputs or not baseline.is_file():
        return None
    if "delta" in result.outputs:
        # The join read the whole baseline: each of its rows is a kept key (updated or not) or
        # a delete, and each kept key not in it an insert. Exact, and no second read.
        previous = result.kept - result.inserts + result.deletes
    else:
        previous = baseline_rows(baseline)
    if result.kept * 2 >= previous:
        return None
    message = (
        f"table {result.table}: {result.kept} rows where the baseline has {previous}; "
        "it shrank by more than half: check that the export is complete"
    )
    log.warning("%s", message)
    return {
        "table": result.table,
        "kind": "shrink",
        "rows": result.kept,
        "baseline_rows": previous,
        "message": message,
    }


def default_parallelism(tables: int) -> int:
    """One table per core, never more workers than tables."""
    return max(1, min(tables, os.cpu_count() or 1))


def run_offline(
    tables: Sequence[TableSpec], request: PrepareRequest, *, progress: Progress | None = None
) -> RunResult:
    """An offline run: cleanse every table, then make the outputs the baselines, under one
    hold of the working directory's lock (the online twin is :func:`prepsync.sync.synchronize`)."""
    with working_lock(request.working_dir):
        run = prepare_connector(tables, request, progress=progress)
        advance_baselines(run)
    return run


#: Set to 0 to skip :func:`check_free_space` (a file system that reports free space wrongly,
#: or a test that fills the disk during a run on purpose).
SPACE_CHECK_VARIABLE = "PREPSYNC_SPACE_CHECK"


def check_free_space(working_dir: Path, jobs: Sequence[TableJob]) -> None:
    """Refuse a run the working directory cannot hold before it starts, rather than failing on
    a full disk half-way. Spill files and outputs each hold about the kept data, so the run
    needs about twice the kept bytes; those are estimated as each source's size times the
    share of its header's columns that are kept (cheap: only headers are read)."""
    if os.environ.get(SPACE_CHECK_VARIABLE) == "0":
        return
    kept_bytes = 0
    for job in jobs:
        try:
            header, _, _ = _cleanse.read_header(
                str(job.source),
                job.separator.encode(),
                job.memory_budget,
                settings=job.read_settings,
            )
            width = len(header)
            size = job.source.stat().st_size // _bytes_per_unit(job)
        except (InputError, OSError):
            continue  # the table's own run reports what is wrong with the file
        kept_bytes += size * min(len(job.spec.columns), width) // max(width, 1)
    needed = 2 * kept_bytes
    free = shutil.disk_usage(working_dir).free
    if free < needed:
        raise UsageError(
            f"not enough free space in {working_dir}: {format_size(free)} free, the run needs "
            f"about {format_size(needed)} (spill files and outputs, twice the "
            f"{format_size(kept_bytes)} of kept data); free some space, or set "
            f"{SPACE_CHECK_VARIABLE}=0 to try anyway"
        )


def _bytes_per_unit(job: TableJob) -> int:
    """About how many bytes of the file make one byte of its UTF-8 text (outputs and spill
    files are UTF-8): 2 for UTF-16, 4 for UTF-32 (mostly ASCII text), else 1."""
    with open(job.source, "rb") as reader:
        head = reader.read(4)
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return 4
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return 2
    if head.startswith(b"\xef\xbb\xbf"):
        return 1
    codec = job.read_settings.resolved.codec
    return 4 if codec.startswith("utf-32") else 2 if codec.startswith("utf-16") else 1


def prepare_connector(
    tables: Sequence[TableSpec],
    request: PrepareRequest,
    *,
    progress: Progress | None = None,
    sender: Sender | None = None,
) -> RunResult:
    """Cleanse every table; all outputs appear together, only if every table succeeded.

    The caller holds :func:`~prepsync.staging.working_lock` on the working directory (as
    :func:`run_offline` and :func:`prepsync.sync.synchronize` do). Up to ``request.parallel``
    tables (default: one per core) are cleansed at once, each with an equal share of the
    memory budget, so the whole run stays within it. The baselines are not touched: call
    :func:`advance_baselines` once the outputs have been accepted (at once for an offline run,
    after the server's commit otherwise). ``sender`` is told of each table's file for the
    server while it is written (:class:`Sender`).
    """
    started = time.monotonic()
    working_dir, baseline_dir = request.working_dir, request.baseline_dir
    workers = max(1, min(request.parallel or default_parallelism(len(tables)), len(tables) or 1))
    share = request.memory_budget // workers
    require_lock(working_dir)
    remove_leftovers(working_dir, baseline_dir)
    jobs = [
        request.table_job(
            spec,
            find_source(request.sources_dir, spec.name),
            memory_budget=share,
            budget_shares=workers,
        )
        for spec in tables
    ]
    check_free_space(working_dir, jobs)
    staged = StagedFiles(working_dir)
    failure = _FirstFailure(len(tables))
    try:
        with spill_directory(working_dir) as spill:

            def cleanse(index: int) -> TableResult:
                own_spill = spill / str(index)  # run file names are per engine
                own_spill.mkdir(mode=DIR_MODE)
                result = stage_table(
                    jobs[index],
                    working_dir,
                    staged,
                    spill_dir=own_spill,
                    progress=progress,
                    should_stop=lambda: failure.stops(index),
                    sending=None
                    if sender is None
                    else lambda temp, name: sender.writing(index, temp, name),
                )
                if sender is not None:
                    sender.written(index)
                return result

            sources = [job.source for job in jobs]
            background = _background_tables(sources) if workers > 1 else set()
            order = _largest_first(sources)
            results = _run_all(cleanse, len(tables), workers, failure, background, order)
        crash_point("staged")
        committing = time.monotonic()
        staged.commit()
        commit_seconds = time.monotonic() - committing
    finally:
        staged.discard()
    warnings = [
        warning
        for result in results
        if (warning := shrink_warning(result, request.baseline_of(result.table)))
    ]
    return RunResult(
        request=request,
        tables=results,
        seconds=time.monotonic() - started,
        peak_rss=peak_rss(),
        warnings=warnings,
        commit_seconds=commit_seconds,
    )


#: Environment variable: how much lower (in nice steps, 0-19) the threads of every table but
#: the largest run while tables are cleansed at once; 0: all alike. See :func:`_background_tables`.
BACKGROUND_NICE_VARIABLE = "PREPSYNC_BACKGROUND_NICE"
#: Its value when unset (or not a whole number 0-19). 19 measured the same as 10 on a quiet
#: machine; 10 leaves the smaller tables a tenth of a contended core where the kernel does not
#: group a session's threads (docs/DESIGN.md, "Parallelism").
DEFAULT_BACKGROUND_NICE = 10


def background_nice() -> int:
    """PREPSYNC_BACKGROUND_NICE as a nice step: DEFAULT_BACKGROUND_NICE when unset or not a
    whole number 0-19."""
    try:
        value = int(os.environ.get(BACKGROUND_NICE_VARIABLE, str(DEFAULT_BACKGROUND_NICE)))
    except ValueError:
        return DEFAULT_BACKGROUND_NICE
    return value if 0 <= value <= 19 else DEFAULT_BACKGROUND_NICE


def _source_sizes(sources: Sequence[Path]) -> list[int]:
    sizes = []
    for source in sources:
        try:
            sizes.append(source.stat().st_size)
        except OSError:
            sizes.append(0)  # its own error comes when the table is read
    return sizes


def _largest_first(sources: Sequence[Path]) -> list[int]:
    """Table indexes by decreasing source size (ties in configuration order): the order the
    pool starts them in. The run ends when its longest table does, so that one starts first
    (the longest-job-first rule) rather than wait for a free thread behind smaller ones."""
    sizes = _source_sizes(sources)
    return sorted(range(len(sources)), key=lambda index: (-sizes[index], index))


def _background_tables(sources: Sequence[Path]) -> set[int]:
    """The tables whose threads run at a lower priority (PREPSYNC_BACKGROUND_NICE, 10 unless
    set; 0 turns it off): every one but the largest source.

    A run of tables at once ends when its largest table does, and that table's end is a
    single-threaded final merge (with its writer thread): the cores are contended while every
    table reads, sorts and spills, and half idle at the end. Run as equals, the smaller tables
    take half the cores in the first part and leave the largest table's last pass alone on one
    core at the end. Favouring the largest table's threads (the longest job first, the usual
    rule for the shortest total time) lets the others fill the gaps it leaves and finish
    during its last pass. Nothing is spent: the same work, in another order. A lower priority
    weighs only against this process's own threads where the kernel groups a session's
    threads (Linux's autogroup, the default of most distributions); elsewhere it also yields
    to other programs, which only delays the smaller tables on a busy machine.
    """
    if not background_nice() or not sys.platform.startswith("linux") or len(sources) < 2:
        return set()
    largest = _largest_first(sources)[0]
    return {index for index in range(len(sources)) if index != largest}


def _run_in_background(work: Callable[[int], TableResult], index: int) -> TableResult:
    """work(index) on a thread of its own whose nice value is background_nice() higher. A thread
    of its own because an unprivileged thread can raise its nice value but never lower it
    again: a pool thread would keep it for the next table. The engine's own threads (spill
    worker, writer) inherit it when they start."""
    outcome: list[TableResult] = []
    failed: list[BaseException] = []

    def target() -> None:
        with contextlib.suppress(OSError):  # no priority to change: run as it is
            tid = threading.get_native_id()
            nice = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + background_nice()))
        try:
            outcome.append(work(index))
        except BaseException as error:  # handed to the pool thread that waits for it
            failed.append(error)

    thread = threading.Thread(target=target, name=f"{threading.current_thread().name}-background")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return outcome[0]


class _Stopped(Exception):
    """An earlier table failed (or Ctrl-C): this one stops at its next block."""


class _FirstFailure:
    """The lowest index of a table that failed. Tables after it stop; tables before it run to
    the end, and if one of them fails too its error is the one reported. So the error a run
    reports is always that of the first failing table in configuration order, whatever the
    timing of the threads."""

    def __init__(self, count: int) -> None:
        self.index = count
        self._lock = threading.Lock()

    def record(self, index: int) -> None:
        with self._lock:
            self.index = min(self.index, index)

    def stops(self, index: int) -> bool:
        return self.index < index


def _run_all(
    work: Callable[[int], TableResult],
    count: int,
    workers: int,
    failure: _FirstFailure,
    background: set[int] | None = None,
    order: Sequence[int] | None = None,
) -> list[TableResult]:
    """work(0..count-1) on `workers` threads (the engine releases the GIL), started in `order`
    (default: index order); the indexes in `background` at a lower priority
    (:func:`_background_tables`). Results come in index order."""
    if workers == 1:
        return [work(index) for index in range(count)]

    def guarded(index: int) -> TableResult:
        try:
            if background and index in background:
                return _run_in_background(work, index)
            return work(index)
        except _Stopped:
            raise
        except BaseException:
            failure.record(index)
            raise

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepsync") as pool:
        started = {index: pool.submit(guarded, index) for index in (order or range(count))}
        futures = [started[index] for index in range(count)]
        try:
            wait(futures)
        except BaseException:  # Ctrl-C reaches the main thread only: stop every table
            failure.record(-1)
            wait(futures)
            raise
    for future in futures:
        error = future.exception()
        if error is not None and not isinstance(error, _Stopped):
            raise error
    return [future.result() for future in futures]


def advance_baselines(run: RunResult) -> list[Path]:
    """Make each table's new ``.sorted.csv`` its baseline, all tables together: the new
    baselines are staged beside the old ones and swapped in by one journaled commit, each old
    one kept as ``.bak``. A full extract, and a change file replayed in initial/complete mode,
    have a ``.sorted.csv``; an incremental change file has none and its table keeps its
    baseline.
    """
    baseline_dir = run.request.baseline_dir
    make_dirs(baseline_dir)
    require_lock(run.request.working_dir)
    staged = StagedFiles(run.request.working_dir)
    targets = []
    try:
        for table in run.tables:
            if "sorted" not in table.outputs:
                continue
            target = run.request.baseline_of(table.table)
            temp = temp_name(target)
            link_or_copy(Path(table.outputs["sorted"]), temp)
            staged.add(target, temp, backup=True)
            targets.append(target)
            # Its row count, in the same commit. A result rebuilt from the session journal
            # after a crash (no source) has no counts: null makes the next run count.
            sidecar = baseline_dir / f"{table.table}{BASELINE_ROWS_SUFFIX}"
            rows = table.kept if table.source else None
            counts = {"rows": rows, "bytes": temp.stat().st_size}
            write_synced(temp_name(sidecar), json.dumps(counts).encode("utf-8"))
            staged.add(sidecar, temp_name(sidecar))
        crash_point("baselines-staged")
        staged.commit()
    finally:
        staged.discard()
    return targets
