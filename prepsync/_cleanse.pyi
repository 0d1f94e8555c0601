"""Type stubs of the native cleansing engine (prepsync/_cleanse.pyx)."""

from collections.abc import Sequence
from typing import Any

from prepsync.dialect import ReadSettings
from prepsync.pipeline import ColumnPlan, EngineFiles
from prepsync.request import TableJob

DEBUG_BUILD: bool
PHASE_NAMES: tuple[str, ...]

def io_block(memory_budget: int) -> int: ...
def live_counters() -> dict[str, int]: ...
def sort_order(keys: Sequence[bytes]) -> list[int]: ...
def read_header(
    path: str,
    separator: bytes,
    memory_budget: int,
    block: int = ...,
    budget_shares: int = ...,
    settings: ReadSettings | None = ...,
) -> tuple[list[str], list[int], int]: ...

class Cleanser:
    """Each option of the native engine comes from one field of ``job``, ``plan`` or
    ``files`` (listed in prepsync/_cleanse.pyx)."""

    source: str
    table: str
    baseline: str
    def __init__(self, job: TableJob, plan: ColumnPlan, files: EngineFiles) -> None: ...
    def read_from(self, fd: int, max_bytes: int) -> int: ...
    def finish_input(self) -> None: ...
    def merge_step(self, max_rows: int = ...) -> bool: ...
    def encoding_read(self) -> str | None: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
