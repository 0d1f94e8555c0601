"""What a prepare run is asked to do: the run's :class:`PrepareRequest`, each table's
:class:`TableJob` built from it, and every default of a run, named once here.

The command line reads these defaults for its options' defaults and help, and the API
(:mod:`prepsync.pipeline`, :mod:`prepsync.sync`, :class:`prepsync.client.ApiClient`) uses the
same names for its parameters' defaults, so the two never disagree. This module imports nothing
heavy: the CLI reads it to build ``--help``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prepsync.dialect import ReadSettings, check_separator
from prepsync.errors import UsageError
from prepsync.protocol import COMMAND_COLUMN, COMPLETE, DEFAULT_SEPARATOR, MODES, SORTED_SUFFIX

if TYPE_CHECKING:
    from prepsync.config import TableSpec

MIB = 1 << 20

# ------------------------------------------------------------------------------ defaults
#: The data buffers of a whole run, shared by the tables cleansed at once.
DEFAULT_MEMORY_BUDGET = 256 * MIB
#: A change file's command column, as the source spells it (case-insensitive). The outputs
#: always spell it ``command`` (:data:`prepsync.protocol.COMMAND_COLUMN`), whatever the source's.
DEFAULT_COMMAND_COLUMN = COMMAND_COLUMN
#: Bytes of each upload request.
DEFAULT_UPLOAD_CHUNK_SIZE = 8 * MIB
#: Seconds an agent run keeps retrying the server before giving up.
DEFAULT_RETRY_SECONDS = 300.0
#: Seconds an operator's command (``prepsync sessions``) keeps retrying: a person is waiting.
DEFAULT_OPERATOR_RETRY_SECONDS = 30.0
#: Seconds an online run waits for the server's verdict on its session.
DEFAULT_WAIT_TIMEOUT = 3600.0

#: The folder of the baselines, under the sources' folder.
BASELINE_DIR = "previous"


def check_mode(mode: str) -> str:
    """A synchronization mode in any case, folded to one of :data:`prepsync.protocol.MODES`."""
    folded = mode.lower()
    if folded not in MODES:
        raise UsageError(f"unknown synchronization mode '{folded}'")
    return folded


@dataclass(frozen=True, kw_only=True)
class TableJob:
    """One table's part of a run: everything cleansing it needs, built once (by
    :meth:`PrepareRequest.table_job`, or by hand for a single table) and read whole by
    :func:`prepsync.pipeline.stage_table`, :func:`prepsync.pipeline.prepare_table` and the
    engine (:class:`prepsync._cleanse.Cleanser`).

    What is not here is not the table's but the run's plumbing: where the files are staged,
    the spill folder, progress, the stop signal and the sender.
    """

    spec: TableSpec  # the table's mapping: name, kept columns, key
    source: Path  # its export, read from the start (header included)
    mode: str = COMPLETE  # one of MODES, lower case (any case is accepted and folded)
    #: ``<sources>/previous/<table>.sorted.csv``: joined with a full extract in incremental
    #: mode (required then), and the header of a 0-byte source when it exists.
    baseline: Path | None = None
    command_column: str = DEFAULT_COMMAND_COLUMN
    separator: str = DEFAULT_SEPARATOR  # the outputs' (and the baseline's)
    #: How the source is read; None: UTF-8 with ``separator`` and nothing else.
    settings: ReadSettings | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # this table's
    #: > 1: ``memory_budget`` is a share of a run's budget split between this many tables, so
    #: that errors name it as such.
    budget_shares: int = 1
    #: Bytes per read of the source and of the baseline; None: the engine's block for the
    #: budget. Tests make it small to cut records at every position.
    read_block: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", check_mode(self.mode))
        object.__setattr__(self, "separator", check_separator(self.separator))

    @property
    def table(self) -> str:
        return self.spec.name

    @property
    def read_settings(self) -> ReadSettings:
        """How the source is read (``settings``, or its default)."""
        return self.settings if self.settings is not None else ReadSettings(self.separator)


@dataclass(frozen=True)
class PrepareRequest:
    """What one prepare run was asked to do, built once (by the CLI or an API caller) and
    passed down whole, so each function takes the settings as one value; each table's
    :class:`TableJob` is built from it by :meth:`table_job`."""

    connector: str
    mode: str  # one of MODES, lower case (any case is accepted and folded)
    sources_dir: Path
    working_dir: Path
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # for the whole run, shared by parallel tables
    separator: str = DEFAULT_SEPARATOR
    command_column: str = DEFAULT_COMMAND_COLUMN
    parallel: int | None = None  # tables cleansed at once; None: one per core
    # How sources are read (``separator`` above is also the sources' unless a table says
    # otherwise): the defaults, and per table (keys casefolded, without ``.csv``).
    encoding: str | None = None
    skip_lines: int = 0
    trim: tuple[str, ...] = ()
    table_settings: Mapping[str, ReadSettings] = field(default_factory=dict)

    def settings_for(self, table: str) -> ReadSettings:
        """How the table's source is read: its own settings, else the run's."""
        own = self.table_settings.get(table.casefold().removesuffix(".csv"))
        if own is not None:
            return own
        return ReadSettings(
            separator=self.separator,
            encoding=self.encoding,
            skip_lines=self.skip_lines,
            trim=self.trim,
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", check_mode(self.mode))

    @property
    def baseline_dir(self) -> Path:
        return self.sources_dir / BASELINE_DIR

    def baseline_of(self, table: str) -> Path:
        """The table's baseline: the ``.sorted.csv`` its last accepted run left."""
        return self.baseline_dir / f"{table}{SORTED_SUFFIX}"

    def table_job(
        self, spec: TableSpec, source: Path, *, memory_budget: int, budget_shares: int
    ) -> TableJob:
        """The table's job in this run: its source (found by the caller), its baseline, its
        share of the run's budget (``memory_budget``, one of ``budget_shares``)."""
        return TableJob(
            spec=spec,
            source=source,
            mode=self.mode,
            baseline=self.baseline_of(spec.name),
            command_column=self.command_column,
            separator=self.separator,
            settings=self.settings_for(spec.name),
            memory_budget=memory_budget,
            budget_shares=budget_shares,
        )
