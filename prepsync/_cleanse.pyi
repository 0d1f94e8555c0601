"""Type stubs of the native cleansing engine (prepsync/_cleanse.pyx)."""

from collections.abc import Sequence
from typing import Any

from prepsync.dialect import ReadSettings

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
    source: str
    table: str
    baseline: str
    def __init__(
        self,
        *,
        source: str,
        table: str,
        separator: bytes,
        memory_budget: int,
        spill_dir: str,
        out_cols: Sequence[int],
        key_cols: Sequence[int],
        command_col: int,
        keep_last: bool,
        replay: bool = ...,
        nullpk_fd: int,
        sorted_fd: int,
        duplicates_fd: int,
        delta_fd: int = ...,
        baseline_fd: int = ...,
        baseline_key_cols: Sequence[int] = ...,
        baseline: str = ...,
        budget_shares: int = ...,
        baseline_read_block: int = ...,
        settings: ReadSettings | None = ...,
    ) -> None: ...
    def read_from(self, fd: int, max_bytes: int) -> int: ...
    def finish_input(self) -> None: ...
    def merge_step(self, max_rows: int = ...) -> bool: ...
    def encoding_read(self) -> str | None: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
